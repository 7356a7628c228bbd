import { defineConfig, type Plugin } from 'vite'
import vue from '@vitejs/plugin-vue'
import { readFileSync, existsSync, readdirSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = dirname(fileURLToPath(import.meta.url))

// Collects the licence texts of every npm package that ends up in the bundle (scripts and the
// font) into dist/THIRD-PARTY-LICENSES.txt: minifying drops the packages' own comments.
function thirdPartyLicenses(): Plugin {
  return {
    name: 'csb-third-party-licenses',
    apply: 'build',
    generateBundle(_opts, bundle) {
      const pkgs = new Set<string>(['@fontsource/noto-sans-sc'])
      for (const chunk of Object.values(bundle)) {
        if (chunk.type !== 'chunk') continue
        for (const id of Object.keys(chunk.modules)) {
          const m = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(id.replace(/\\/g, '/'))
          if (m) pkgs.add(m[1])
        }
      }
      let out = 'Third-party software bundled in this web page, with their licences.\n'
      for (const name of [...pkgs].sort()) {
        const dir = join(root, 'node_modules', name)
        const pj = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
        const lic = readdirSync(dir).find((f) => /^(licen[cs]e|copying)/i.test(f))
        out += `\n${'='.repeat(78)}\n${name} ${pj.version} — ${pj.license ?? 'see below'}\n${'='.repeat(78)}\n`
        const notice = readdirSync(dir).find((f) => /^notice/i.test(f))
        if (lic) out += readFileSync(join(dir, lic), 'utf8').trim() + '\n'
        if (notice && existsSync(join(dir, notice))) out += '\n' + readFileSync(join(dir, notice), 'utf8').trim() + '\n'
      }
      this.emitFile({ type: 'asset', fileName: 'THIRD-PARTY-LICENSES.txt', source: out })
    },
  }
}

export default defineConfig({
  base: '/',
  plugins: [vue(), thirdPartyLicenses()],
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    target: 'es2020',
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 1500,
    modulePreload: { polyfill: false },
    minify: process.env.CSB_NOMINIFY ? false : 'esbuild',
  },
  server: {
    proxy: {
      '/api': { target: process.env.CSB_HUB ?? 'http://127.0.0.1:8080', changeOrigin: false },
      '/ngsi-ld': { target: process.env.CSB_HUB ?? 'http://127.0.0.1:8080' },
      '/open311': { target: process.env.CSB_HUB ?? 'http://127.0.0.1:8080' },
    },
  },
})
