// Region configuration: `--region NAME=REDIS_URL` (repeatable, first is home) for the api; one region per worker.
export interface RegionSpec {
  name: string;
  redisUrl: string;
}

const NAME = /^[a-z0-9][a-z0-9_-]{0,31}$/;

export function parseRegionSpecs(values: string[]): RegionSpec[] {
  const specs = values.map((v) => {
    const eq = v.indexOf('=');
    if (eq < 1) throw new Error(`--region ${JSON.stringify(v)}: expected NAME=REDIS_URL`);
    return parseRegion(v.slice(0, eq), v.slice(eq + 1));
  });
  const seen = new Set<string>();
  for (const s of specs) {
    if (seen.has(s.name)) throw new Error(`--region ${s.name}: given twice`);
    seen.add(s.name);
  }
  return specs;
}

export function parseRegion(name: string, redisUrl: string): RegionSpec {
  if (!NAME.test(name)) throw new Error(`--region ${JSON.stringify(name)}: names are lowercase letters, digits, - and _`);
  let url: URL;
  try {
    url = new URL(redisUrl);
  } catch {
    throw new Error(`--region ${name}: ${JSON.stringify(redisUrl)} is not a URL`);
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') throw new Error(`--region ${name}: the Redis URL must start with redis:// or rediss://`);
  return { name, redisUrl };
}
