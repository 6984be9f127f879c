// Local HTTP servers for e2e tests: an image host (with a redirect and a 404) and a callback receiver.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Received {
  headers: http.IncomingHttpHeaders;
  raw: string;
  body: any;
  status: number;
}

export async function listen(handler: http.RequestListener, host = '127.0.0.1') {
  const server = http.createServer(handler);
  await new Promise<void>((r) => server.listen(0, host, r));
  const { port } = server.address() as AddressInfo;
  return { server, port, close: () => new Promise<void>((r) => server.close(() => r())) };
}

/** Serves `files` by path; `/redirect?to=URL` answers 302 to URL; anything else 404. */
export async function imageHost(files: Record<string, { bytes: Buffer; type: string }>) {
  return listen((req, res) => {
    const url = new URL(req.url!, 'http://x');
    if (url.pathname === '/redirect') {
      res.writeHead(302, { location: url.searchParams.get('to')! }).end();
      return;
    }
    const f = files[url.pathname];
    if (!f) return void res.writeHead(404).end('not found');
    res.writeHead(200, { 'content-type': f.type, 'content-length': f.bytes.length }).end(f.bytes);
  });
}

/** Records every callback; answers 500 to the first `failFirst` deliveries of each run. */
export async function callbackReceiver(failFirst = 0) {
  const received: Received[] = [];
  const seen = new Map<string, number>();
  const srv = await listen((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      const body = JSON.parse(raw);
      const n = (seen.get(body.run_id) ?? 0) + 1;
      seen.set(body.run_id, n);
      const status = n <= failFirst ? 500 : 200;
      received.push({ headers: req.headers, raw, body, status });
      res.writeHead(status).end();
    });
  });
  return { ...srv, received, url: (path = '/hook') => `http://127.0.0.1:${srv.port}${path}` };
}
