// ECharts, tree-shaken: only what the page draws. Canvas renderer (no WebGL needed).
import * as echarts from 'echarts/core'
import { BarChart, LineChart, PieChart, GaugeChart, ScatterChart, EffectScatterChart, LinesChart, HeatmapChart } from 'echarts/charts'
import {
  GridComponent,
  TooltipComponent,
  LegendComponent,
  GeoComponent,
  VisualMapContinuousComponent,
  TitleComponent,
  GraphicComponent,
} from 'echarts/components'
import { CanvasRenderer } from 'echarts/renderers'

echarts.use([
  BarChart,
  LineChart,
  PieChart,
  GaugeChart,
  ScatterChart,
  EffectScatterChart,
  LinesChart,
  HeatmapChart,
  GridComponent,
  TooltipComponent,
  LegendComponent,
  GeoComponent,
  VisualMapContinuousComponent,
  TitleComponent,
  GraphicComponent,
  CanvasRenderer,
])

export { echarts }
export type ECharts = echarts.ECharts
export const FONT = '"Noto Sans SC", sans-serif'

/** Read-only hooks for the browser tests: the live chart instances by name. */
const charts = new Map<string, echarts.ECharts>()
const maps = new Map<string, string[]>()
export function registerChart(name: string, c: echarts.ECharts | null) {
  if (c) charts.set(name, c)
  else charts.delete(name)
}
export function registerGeo(name: string, features: string[]) {
  maps.set(name, features)
}
declare global {
  interface Window {
    __csb?: unknown
  }
}
window.__csb = Object.freeze({
  charts: () => [...charts.keys()],
  option: (name: string) => {
    const c = charts.get(name)
    return c ? JSON.parse(JSON.stringify(c.getOption())) : null
  },
  geo: (name: string) => maps.get(name) ?? null,
})

/** The dark 大屏 palette shared by every chart. */
export const C = {
  text: '#cfe3ff',
  sub: '#7f9cc4',
  line: '#24406b',
  cyan: '#27d3ff',
  blue: '#2f7bff',
  green: '#32d17e',
  yellow: '#ffc53d',
  red: '#ff5b5b',
  grey: '#6b7a90',
  purple: '#a77bff',
  palette: ['#27d3ff', '#2f7bff', '#32d17e', '#ffc53d', '#ff8a3d', '#a77bff', '#ff5b8a', '#5be1c8', '#9fb6d6'],
}
export const STATUS_COLOR: Record<string, string> = {
  online: C.green,
  offline: C.red,
  stale: C.yellow,
  never_seen: C.grey,
}
export const LIGHT_COLOR: Record<string, string> = { green: C.green, yellow: C.yellow, red: C.red, none: '#9fb6d6' }

import { ref } from 'vue'
/** Chart text follows the page's root font size (1920 px wide → 1, 3840 px → 2). */
export const uiScale = ref(1)
function measure() {
  const px = parseFloat(getComputedStyle(document.documentElement).fontSize) || 14
  const s = Math.max(1, Math.round((px / 14) * 20) / 20)
  if (s !== uiScale.value) uiScale.value = s
}
measure()
window.addEventListener('resize', measure)
/** A font (or mark) size scaled with the page. */
export const fs = (n: number) => Math.round(n * uiScale.value)

const SCALED = new Set(['fontSize', 'width', 'barMaxWidth', 'barWidth', 'symbolSize', 'itemWidth', 'itemHeight', 'pointSize', 'blurSize', 'shadowBlur', 'left', 'right', 'top', 'bottom', 'itemGap', 'lineHeight', 'padding'])
/** The option with its pixel sizes (fonts, marks, margins) scaled for big walls; `data` arrays
 *  are shared, not walked. */
export function scaleOption<T>(o: T, k = uiScale.value): T {
  if (k === 1) return o
  const walk = (v: unknown, key: string): unknown => {
    if (typeof v === 'number') return SCALED.has(key) ? Math.round(v * k * 10) / 10 : v
    if (Array.isArray(v)) return key === 'data' || key === 'coords' ? v : v.map((x) => walk(x, key === 'series' ? '' : key))
    if (v && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
      const out: Record<string, unknown> = {}
      for (const [kk, vv] of Object.entries(v)) out[kk] = kk === 'data' ? vv : walk(vv, kk)
      return out
    }
    return v
  }
  const r = walk(o, '') as Record<string, unknown>
  r.textStyle = { ...(r.textStyle as object), fontSize: Math.round(12 * k) }
  return r as T
}
