// Cluster run store schema, applied in order under an advisory lock so N replicas starting at once agree.
// Times are epoch milliseconds (BIGINT) like the SQLite store, so RunRecord stays one shape for both.
export const MIGRATIONS: string[] = [
  `CREATE TABLE runs (
     id TEXT PRIMARY KEY,
     status TEXT NOT NULL,
     model_id TEXT NOT NULL,
     input JSONB NOT NULL,
     output JSONB,
     metadata JSONB,
     client_ref TEXT,
     callback_url TEXT,
     created_at BIGINT NOT NULL,
     started_at BIGINT,
     completed_at BIGINT,
     failure_code TEXT,
     failure_message TEXT,
     failure_stage_code TEXT,
     attempts INTEGER NOT NULL DEFAULT 0,
     output_token TEXT NOT NULL,
     -- Cluster-only columns: where the run is queued, who holds it, until when.
     region TEXT,
     queued_at BIGINT,
     lease_token TEXT,
     lease_until BIGINT,
     worker TEXT,
     moves INTEGER NOT NULL DEFAULT 0
   );
   CREATE INDEX runs_status ON runs(status, id);
   CREATE INDEX runs_region_status ON runs(region, status, queued_at);
   CREATE INDEX runs_client_ref ON runs(client_ref) WHERE client_ref IS NOT NULL;

   -- Every engine result a worker tried to publish, winning or not: the soak counts doubles from here.
   CREATE TABLE run_executions (
     id BIGSERIAL PRIMARY KEY,
     run_id TEXT NOT NULL,
     worker TEXT NOT NULL,
     region TEXT NOT NULL,
     won BOOLEAN NOT NULL,
     at BIGINT NOT NULL
   );
   CREATE INDEX run_executions_run ON run_executions(run_id);

   CREATE TABLE deliveries (
     id BIGSERIAL PRIMARY KEY,
     run_id TEXT NOT NULL,
     url TEXT NOT NULL,
     event TEXT NOT NULL,
     body TEXT NOT NULL,
     attempts INTEGER NOT NULL DEFAULT 0,
     next_attempt_at BIGINT NOT NULL,
     state TEXT NOT NULL DEFAULT 'pending',
     last_error TEXT
   );
   CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);

   -- queued_at restarts whenever a run (re)enters the queue; the sweeper ages stuck runs from it.
   CREATE FUNCTION runs_touch() RETURNS trigger AS $$
   BEGIN
     IF NEW.status = 'queued' AND (TG_OP = 'INSERT' OR OLD.status <> 'queued') THEN
       NEW.queued_at := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
     END IF;
     IF NEW.status <> 'dispatching' AND NEW.status <> 'running' THEN
       NEW.lease_token := NULL;
       NEW.lease_until := NULL;
     END IF;
     RETURN NEW;
   END $$ LANGUAGE plpgsql;
   CREATE TRIGGER runs_touch BEFORE INSERT OR UPDATE ON runs FOR EACH ROW EXECUTE FUNCTION runs_touch();

   -- Every status change reaches every API replica (Prefer: wait, SSE) whoever wrote it.
   CREATE FUNCTION runs_notify() RETURNS trigger AS $$
   BEGIN
     IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status THEN
       PERFORM pg_notify('kleinserve_runs', NEW.id);
     END IF;
     RETURN NULL;
   END $$ LANGUAGE plpgsql;
   CREATE TRIGGER runs_notify AFTER INSERT OR UPDATE ON runs FOR EACH ROW EXECUTE FUNCTION runs_notify();`,
  // Idempotency keys and erasures (idempotency/postgres.ts, retention/postgres.ts): the unique (scope, key) is what
  // makes a repeated create return the original run across api replicas.
  `CREATE TABLE idempotency_keys (
     scope TEXT NOT NULL,
     key TEXT NOT NULL,
     run_id TEXT,
     created_at BIGINT NOT NULL,
     PRIMARY KEY (scope, key)
   );
   CREATE INDEX idempotency_run ON idempotency_keys(run_id);
   CREATE INDEX idempotency_age ON idempotency_keys(created_at);
   CREATE TABLE run_erasures (run_id TEXT PRIMARY KEY, erased_at BIGINT NOT NULL);`,
  // A repeated Idempotency-Key must ask for the same run (hash of the canonical request); each callback
  // attempt records the Runflow-Request-Id it was sent with.
  `ALTER TABLE idempotency_keys ADD COLUMN fingerprint TEXT;
   ALTER TABLE deliveries ADD COLUMN request_id TEXT;`,
  // A run's own callback contract (surfaces other than Runflow's), and how each delivery is signed.
  `ALTER TABLE runs ADD COLUMN callback JSONB;
   ALTER TABLE deliveries ADD COLUMN signing TEXT;`,
];
