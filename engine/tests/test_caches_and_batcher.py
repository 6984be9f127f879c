import asyncio
import time

from kleinserve_engine.batcher import Batcher
from kleinserve_engine.caches import ByteLRU


def test_lru_evicts_least_recent_by_bytes():
    c = ByteLRU("t", 100)
    c.put("a", 1, 40)
    c.put("b", 2, 40)
    assert c.get("a") == 1  # a is now the most recent
    c.put("c", 3, 40)
    assert "b" not in c and "a" in c and "c" in c
    assert c.bytes == 80 and c.evictions == 1
    c.put("huge", 4, 101)
    assert "huge" not in c and c.bytes == 80
    assert c.get("zzz") is None and (c.hits, c.misses) == (1, 1)


class FakeJob:
    def __init__(self, key, n=1):
        self.key, self.num_images = key, n

    def batch_key(self):
        return self.key


def run_batcher(schedule, window_ms=50, max_batch=4):
    """schedule: [(delay_s, key, n)] -> list of (time, [keys]) submissions."""
    async def go():
        out = []
        t0 = time.perf_counter()
        b = Batcher(lambda jobs: out.append((time.perf_counter() - t0, [j.key for j in jobs], jobs)), window_ms / 1000, max_batch)
        for delay, key, n in schedule:
            await asyncio.sleep(delay)
            b.add(FakeJob(key, n))
        await asyncio.sleep(window_ms / 1000 * 3)
        return out
    return asyncio.run(go())


def test_same_key_within_window_is_one_batch():
    out = run_batcher([(0, "A", 1), (0.01, "A", 1), (0.01, "A", 1)])
    assert [keys for _, keys, _ in out] == [["A", "A", "A"]]


def test_other_keys_do_not_wait_behind_each_other():
    out = run_batcher([(0, "A", 1), (0.005, "B", 1)], window_ms=60)
    assert sorted(keys[0] for _, keys, _ in out) == ["A", "B"]
    for t, _, _ in out:
        assert t < 0.06 + 0.05  # each flushed by its own window, not behind the other's


def test_full_batch_is_sent_without_waiting():
    out = run_batcher([(0, "A", 2), (0, "A", 2), (0, "A", 1)], window_ms=500)
    assert [len(keys) for _, keys, _ in out] == [2, 1]
    assert out[0][0] < 0.1


def test_remove_takes_a_job_out_of_its_group():
    async def go():
        out = []
        b = Batcher(lambda jobs: out.append(jobs), 0.05, 4)
        j1, j2 = FakeJob("A"), FakeJob("A")
        b.add(j1)
        b.add(j2)
        assert b.remove(j1) and not b.remove(j1)
        await asyncio.sleep(0.1)
        return out
    assert [[j.key for j in batch] for batch in asyncio.run(go())] == [["A"]]
