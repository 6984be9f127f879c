import threading
import time

import pytest

from kleinserve_engine.batcher import DEFAULT_BATCH_RULE, BatchQueue, BatchRule
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
    def __init__(self, key="A", n=1, w=512, h=512, deterministic=False, guided=False):
        self.key, self.num_images, self.width, self.height, self.deterministic = key, n, w, h, deterministic
        self.denoise_rows = n * (2 if guided else 1)

    def batch_key(self):
        return (self.key, self.width, self.height)


def test_batch_rule_gives_each_output_size_its_limit():
    rule = BatchRule.parse("512x512:4,1024x1024:1", max_batch=8)
    assert rule.limit_for(FakeJob(w=64, h=64)) == 4
    assert rule.limit_for(FakeJob(w=512, h=512)) == 4
    assert rule.limit_for(FakeJob(w=768, h=512)) == 1  # above 512² the next listed size (1024²) applies
    assert rule.limit_for(FakeJob(w=1024, h=1024)) == 1
    assert rule.limit_for(FakeJob(w=2048, h=2048)) == 1  # above every listed size: never batched
    assert rule.limit_for(FakeJob(w=64, h=64, deterministic=True)) == 1
    assert BatchRule.parse("1024x1024:16", max_batch=2).limit_for(FakeJob()) == 2  # --max-batch caps the rule
    assert BatchRule.parse("none").limit_for(FakeJob(w=64, h=64)) == 1
    for bad in ("512:4", "512x512:0", "axb:2", "512x512"):
        with pytest.raises(ValueError):
            BatchRule.parse(bad)
    with pytest.raises(ValueError):
        BatchRule.parse(DEFAULT_BATCH_RULE, max_batch=0)


def test_an_idle_inference_thread_gets_a_request_at_once_and_alone():
    """No window: the thread waiting in take() receives the first request immediately, without batch mates."""
    q = BatchQueue(BatchRule.parse("512x512:4"))
    got = []

    def consumer():
        got.append((q.take(timeout=5), time.perf_counter()))

    t = threading.Thread(target=consumer)
    t.start()
    time.sleep(0.05)  # the consumer is now idle in take()
    sent = time.perf_counter()
    q.put(FakeJob())
    t.join(5)
    batch, at = got[0]
    assert len(batch) == 1 and at - sent < 0.05
    q.put(FakeJob())  # a later mate is not added to a batch that already left
    assert len(q) == 1


def test_requests_that_queued_while_busy_run_together_up_to_their_size_limit():
    q = BatchQueue(BatchRule.parse("512x512:4,1024x1024:1"))
    small = [FakeJob("A") for _ in range(5)]
    other = FakeJob("B")
    big = [FakeJob("C", w=1024, h=1024) for _ in range(2)]
    for j in (small[0], other, *small[1:], *big):
        q.put(j)
    assert q.take() == small[:4]  # oldest first, its same-key followers jump the other key, up to 4
    assert q.take() == [other]
    assert q.take() == [small[4]]
    assert q.take() == [big[0]]  # 1024²: the rule says batching does not pay
    assert q.take() == [big[1]]
    assert q.take(timeout=0.01) is None


def test_multi_image_requests_count_images_not_requests():
    q = BatchQueue(BatchRule.parse("512x512:4"))
    a, b, c = FakeJob(n=3), FakeJob(n=2), FakeJob(n=1)
    for j in (a, b, c):
        q.put(j)
    assert q.take() == [a, c] and q.take() == [b]


def test_guided_images_count_two_rows_each():
    q = BatchQueue(BatchRule.parse("512x512:4"))
    a, b, c, d = FakeJob(guided=True), FakeJob(guided=True), FakeJob(guided=True), FakeJob()
    for j in (a, b, c, d):
        q.put(j)
    assert q.take() == [a, b]  # four rows: the limit
    assert q.take() == [c, d]  # three rows


def test_job_rows_follow_its_guidance():
    from kleinserve_engine.pipeline import Job

    def job(seeds, guidance):
        return Job(prompt="p", refs=[], seeds=seeds, width=64, height=64, guidance=guidance)

    assert (job([1, 2], 1.0).denoise_rows, job([1, 2], 4.0).denoise_rows, job([1], 1.5).denoise_rows) == (2, 4, 2)


def test_a_deterministic_request_never_shares_a_batch():
    q = BatchQueue(BatchRule.parse("512x512:4"))
    plain1, det, plain2 = FakeJob(), FakeJob(deterministic=True), FakeJob()
    for j in (plain1, det, plain2):
        q.put(j)
    assert q.take() == [plain1, plain2]
    assert q.take() == [det]
    q.put(det)
    q.put(plain1)
    assert q.take() == [det] and q.take() == [plain1]


def test_remove_and_close():
    q = BatchQueue(BatchRule.parse("512x512:4"))
    j1, j2 = FakeJob(), FakeJob()
    q.put(j1)
    q.put(j2)
    assert q.remove(j1) and not q.remove(j1)
    assert q.take() == [j2]
    q.close()
    assert q.take() is None
