// For a hub built without the web page embedded: serves dist/ (hashed assets, SPA fallback,
// the hub's CSP) and forwards the API paths to the hub, so the page sees one origin.
import http from 'node:http'
import { readFile } from 'node:fs/promises'
import { join, extname, normalize } from 'node:path'

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
}
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
const API = /^\/(api|ngsi-ld|open311|metrics)(\/|$)/

export function startStaticProxy(dist, hubUrl) {
  const hub = new URL(hubUrl)
  const server = http.createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname)
    if (API.test(path)) {
      const up = http.request(
        { host: hub.hostname, port: hub.port, path: req.url, method: req.method, headers: req.headers },
        (r) => {
          res.writeHead(r.statusCode ?? 502, r.headers)
          r.pipe(res)
          // The hub went away mid-response (a stream): end ours too, as a direct connection would.
          r.on('aborted', () => res.destroy())
          r.on('error', () => res.destroy())
        },
      )
      up.on('error', () => {
        if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/json' })
        res.end('{"error":"hub unreachable","status":502}')
      })
      req.pipe(up)
      res.on('close', () => up.destroy())
      return
    }
    const rel = normalize(path).replace(/^(\.\.[/\\])+/, '')
    let file = join(dist, rel)
    let type = TYPES[extname(file)]
    if (!type || rel === '/') {
      file = join(dist, 'index.html')
      type = TYPES['.html']
    }
    try {
      const body = await readFile(file)
      res.writeHead(200, {
        'content-type': type,
        'content-security-policy': CSP,
        'cache-control': rel.startsWith('/assets/') ? 'public, max-age=31536000, immutable' : 'no-cache',
      })
      res.end(body)
    } catch {
      res.writeHead(404, { 'content-type': 'text/plain' })
      res.end('not found')
    }
  })
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      resolve({
        url: `http://127.0.0.1:${port}`,
        close: () =>
          new Promise((r) => {
            server.closeAllConnections?.()
            server.close(() => r())
          }),
      })
    })
  })
}
