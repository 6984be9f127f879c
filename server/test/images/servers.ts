import { createServer, type RequestListener, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** A real local HTTP server that records every request it receives. */
export interface RecordingServer {
  server: Server;
  port: number;
  hits: string[];
  close(): Promise<void>;
}

export async function startServer(host: string, handler: RequestListener = ok, port = 0): Promise<RecordingServer> {
  const hits: string[] = [];
  const server = createServer((req, res) => {
    hits.push(`${req.socket.localAddress} ${req.method} ${req.url}`);
    handler(req, res);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // ipv6Only false: a canary on '::' also answers IPv4 (127.x, 0.0.0.0, the eth0 address).
    server.listen({ host, port, ipv6Only: false }, () => resolve());
  });
  return {
    server,
    hits,
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function ok(_req: Parameters<RequestListener>[0], res: Parameters<RequestListener>[1]): void {
  res.end('canary');
}
