// Page-wide state: the session, the county model, the device map, the live feed and the one
// Server-Sent Events stream of the page (/api/v1/live), with its stale detection and refetches.
import { reactive, ref, shallowRef, markRaw, triggerRef } from 'vue'
import {
  api,
  q,
  iso,
  wireIdOf,
  ApiError,
  type SessionInfo,
  type County,
  type Inventory,
  type DeviceRow,
  type Event,
  type CaseView,
  type CasesBody,
  type EventsBody,
  type AggregateBody,
} from './api'
import { locale } from './i18n'

export const FEED_MAX = 40
export const HEARTBEAT_STALE_MS = 12_000
export const OPEN_CASES_MAX = 5000

export const session = ref<SessionInfo | null>(null)
export const county = shallowRef<County | null>(null)
/** The county outline (GeoJSON), when the hub serves one. */
export const outline = shallowRef<unknown | null>(null)
export const inventory = shallowRef<Inventory | null>(null)
/** Device id → row (status kept current by the stream's `devices` deltas). Not deeply reactive:
 *  `devicesVersion` ticks (at most once a second) when it changed. */
export const devices = markRaw(new Map<string, DeviceRow>())
export const liveAttrs = markRaw(new Map<string, Record<string, unknown>>())
export const devicesVersion = ref(0)
/** Open cases by id (kept current by `case` deltas). */
export const openCases = markRaw(new Map<string, CaseView>())
export const casesVersion = ref(0)
export const feed = shallowRef<(Event & { arrived_ms: number; live: boolean })[]>([])
export const eventsToday = reactive({ byType: {} as Record<string, number>, detections: 0, rules: 0, since: 0 })
/** Bumped whenever the page must re-read its snapshot (first load, hello resumed=false, resync, wake). */
export const snapshotVersion = ref(0)
export const categoryNames = shallowRef<Record<string, { zh: string; en: string }>>({})

export const now = ref(Date.now())
export const live = reactive({
  connected: false,
  lastDataMs: 0 as number,
  lastBeatMs: 0 as number,
  stale: false,
  everConnected: false,
  reconnects: 0,
  serverOffsetMs: 0,
})

// ---- lookups ----
const nameOf = (x: { name: string; name_en?: string | null } | undefined, id: string) =>
  x ? (locale.value === 'en' && x.name_en ? x.name_en : x.name) : id
export function deptName(id?: string | null): string {
  if (!id) return '—'
  return nameOf(county.value?.departments.find((d) => d.id === id), id)
}
export function townName(id?: string | null): string {
  if (!id) return '—'
  return nameOf(county.value?.towns.find((d) => d.id === id), id)
}
export function categoryName(id?: string | null): string {
  if (!id) return '—'
  const c = categoryNames.value[id]
  return c ? (locale.value === 'en' ? c.en : c.zh) : id
}
export function deviceName(id: string): string {
  const d = devices.get(id)
  if (d?.name) {
    if (locale.value === 'en') {
      const c = county.value
      const all = c ? [...c.cameras, ...c.sensors, ...c.gateways] : []
      const m = all.find((x) => x.id === id)
      if (m?.name_en) return m.name_en
    }
    return d.name
  }
  return id
}
/** The county device an event came from (camera, or sensor for sensor rules). */
export function eventSource(e: Event): DeviceRow | undefined {
  return devices.get(`${e.site}/${e.device}/${e.camera}`) ?? devices.get(e.camera)
}

// ---- loading ----
export async function loadSession(): Promise<SessionInfo | null> {
  try {
    const s = await api<SessionInfo>('/api/v1/session', { quiet401: true })
    session.value = s.signed_in === false ? null : s
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      // A hub without sessions (older build): its API is open.
      session.value = { name: 'anonymous', role: 'admin', department: null, auth: false }
    } else session.value = null
  }
  return session.value
}

export async function loadCounty() {
  const c = await api<County>('/api/v1/county')
  county.value = c
  const o = c.county.outline
  if (o && typeof o === 'object') outline.value = o
  else {
    try {
      outline.value = await api<unknown>('/api/v1/county/outline', { quiet401: true })
    } catch {
      outline.value = null
    }
  }
}

async function loadCategories() {
  try {
    const lang = locale.value === 'en' ? 'en' : 'zh-CN'
    const [zh, en] = await Promise.all(
      ['zh-CN', 'en'].map((l) =>
        api<{ service_code: string; service_name: string; keywords?: string }[]>(
          `/open311/v2/services.json${q({ locale: l })}`,
          { quiet401: true },
        ),
      ),
    )
    void lang
    const out: Record<string, { zh: string; en: string }> = {}
    zh.forEach((s, i) => {
      const id = (s.keywords ?? '').split(',')[0] || s.service_code
      out[id] = { zh: s.service_name, en: en[i]?.service_name ?? s.service_name }
    })
    categoryNames.value = out
  } catch {
    /* names stay ids */
  }
}

export async function loadInventory() {
  const inv = await api<Inventory>('/api/v1/inventory')
  inventory.value = inv
  devices.clear()
  for (const d of inv.devices) devices.set(d.id, d)
  devicesVersion.value++
}

export async function loadOpenCases() {
  const body = await api<CasesBody>(`/api/v1/cases${q({ open: true, limit: 500 })}`)
  openCases.clear()
  for (const c of body.cases) openCases.set(c.id, c)
  let next = body.next
  while (next && openCases.size < OPEN_CASES_MAX) {
    const more = await api<CasesBody>(`/api/v1/cases${q({ open: true, limit: 500, after: next })}`)
    for (const c of more.cases) openCases.set(c.id, c)
    next = more.next
  }
  casesVersion.value++
}

export function startOfToday(t = Date.now()) {
  const d = new Date(t)
  d.setHours(0, 0, 0, 0)
  return d.getTime()
}

export async function loadFeedAndCounts() {
  const [evs] = await Promise.all([api<EventsBody>(`/api/v1/events${q({ kind: 'rule', limit: 20 })}`), loadCounts()])
  const t = Date.now()
  const seen = new Map(feed.value.map((e) => [e.id, e]))
  feed.value = evs.events.slice(0, FEED_MAX).map((e) => seen.get(e.id) ?? { ...e, arrived_ms: t, live: false })
}

async function loadCounts() {
  const since = startOfToday()
  const [agg, kinds] = await Promise.all([
    api<AggregateBody>(`/api/v1/events/aggregate${q({ by: 'event_type', kind: 'rule', from: iso(since) })}`),
    api<AggregateBody>(`/api/v1/events/aggregate${q({ by: 'kind', from: iso(since) })}`),
  ])
  const byType: Record<string, number> = {}
  for (const g of agg.groups) byType[g.key[0] || '?'] = g.total
  eventsToday.byType = byType
  eventsToday.detections = kinds.groups.find((g) => g.key[0] === 'detection')?.total ?? 0
  eventsToday.rules = kinds.groups.find((g) => g.key[0] === 'rule')?.total ?? 0
  eventsToday.since = since
}

let snapshotLoading: Promise<void> | null = null
/** Re-reads everything the stream keeps current. */
export function refetchSnapshot(): Promise<void> {
  if (snapshotLoading) return snapshotLoading
  snapshotLoading = (async () => {
    try {
      await Promise.all([loadInventory(), loadOpenCases(), loadFeedAndCounts()])
      live.lastDataMs = Date.now()
    } catch (e) {
      console.warn('snapshot refetch failed', e)
    } finally {
      snapshotLoading = null
      snapshotVersion.value++
    }
  })()
  return snapshotLoading
}

export async function bootData() {
  await Promise.all([loadCounty(), loadCategories()])
  await refetchSnapshot()
}

// ---- the live stream ----
let es: EventSource | null = null
let reopenTimer: number | undefined
let backoff = 1000
let devicesDirty = false
const pendingCaseIds = new Set<string>()
let hiddenAt = 0

function markData() {
  live.lastDataMs = Date.now()
  live.lastBeatMs = live.lastDataMs
  if (live.stale) live.stale = false
}

function parse<T>(ev: MessageEvent): T | null {
  try {
    return JSON.parse(ev.data) as T
  } catch {
    return null
  }
}

function onEvent(e: Event) {
  const t = Date.now()
  const list = feed.value
  if (list.some((x) => x.id === e.id)) return
  const next = [{ ...e, arrived_ms: t, live: true }, ...list]
  next.sort((a, b) => b.ts_ms - a.ts_ms)
  if (next.length > FEED_MAX) next.length = FEED_MAX
  feed.value = next
  if (e.ts_ms >= eventsToday.since) {
    if (e.kind === 'rule' && e.rule) {
      eventsToday.rules++
      const k = e.rule.event_type
      eventsToday.byType = { ...eventsToday.byType, [k]: (eventsToday.byType[k] ?? 0) + 1 }
    } else eventsToday.detections++
  }
}

function onDevices(body: { changes: { entity: string; type: string; attrs: Record<string, unknown> }[] }) {
  for (const c of body.changes ?? []) {
    const id = wireIdOf(c.entity)
    // Attributes beyond the status (camera state, fps, …) for the details panel; the status
    // itself lives in the device row.
    const { status: _s, ...rest } = c.attrs
    void _s
    if (Object.keys(rest).length) liveAttrs.set(id, { ...liveAttrs.get(id), ...rest })
    const d = devices.get(id)
    if (d && typeof c.attrs.status === 'string') {
      d.status = c.attrs.status as DeviceRow['status']
      if (d.status === 'online') d.last_seen_ms = Date.now()
    }
  }
  devicesDirty = true
}

const CLOSED_STATES = new Set(['closed', 'rejected', 'voided'])
function onCase(c: { id: string; state: string; department?: string | null; category: string; town?: string | null }) {
  if (CLOSED_STATES.has(c.state)) {
    if (openCases.delete(c.id)) casesVersion.value++
  } else pendingCaseIds.add(c.id)
  caseChanges.value++
}
/** Counts case changes seen on the stream (views refetch their lists on it, throttled). */
export const caseChanges = ref(0)

async function flushCases() {
  if (pendingCaseIds.size === 0) return
  const ids = [...pendingCaseIds]
  pendingCaseIds.clear()
  if (ids.length > 20) {
    await loadOpenCases().catch(() => {})
    return
  }
  const got = await Promise.all(ids.map((id) => api<CaseView>(`/api/v1/cases/${encodeURIComponent(id)}`).catch(() => null)))
  for (const c of got) if (c) CLOSED_STATES.has(c.state) ? openCases.delete(c.id) : openCases.set(c.id, c)
  casesVersion.value++
}

let openedAt = 0
export function openLive() {
  closeLive()
  const s = new EventSource('/api/v1/live')
  es = s
  openedAt = Date.now()
  s.addEventListener('open', () => {
    live.connected = true
    backoff = 1000
  })
  s.addEventListener('hello', (ev) => {
    const b = parse<{ server_ms: number; resumed: boolean }>(ev as MessageEvent)
    markData()
    live.everConnected = true
    if (b) live.serverOffsetMs = b.server_ms - Date.now()
    if (!b?.resumed) void refetchSnapshot()
  })
  s.addEventListener('heartbeat', (ev) => {
    const b = parse<{ server_ms: number }>(ev as MessageEvent)
    markData()
    if (b) live.serverOffsetMs = b.server_ms - Date.now()
  })
  s.addEventListener('event', (ev) => {
    const b = parse<Event>(ev as MessageEvent)
    markData()
    if (b) onEvent(b)
  })
  s.addEventListener('devices', (ev) => {
    const b = parse<{ changes: { entity: string; type: string; attrs: Record<string, unknown> }[] }>(ev as MessageEvent)
    markData()
    if (b) onDevices(b)
  })
  s.addEventListener('case', (ev) => {
    const b = parse<{ id: string; state: string; category: string; department?: string | null; town?: string | null }>(
      ev as MessageEvent,
    )
    markData()
    if (b) onCase(b)
  })
  s.addEventListener('resync', () => {
    markData()
    void refetchSnapshot()
  })
  s.addEventListener('error', () => {
    // Close and reopen ourselves (a fresh stream says hello with resumed=false: we refetch).
    live.connected = false
    if (es !== s) return
    s.close()
    es = null
    // EventSource cannot see a 401 (an expired session): ask, and go to sign-in if so.
    void api<SessionInfo>('/api/v1/session')
      .then((who) => {
        if (who.signed_in === false) session.value = null
      })
      .catch(() => {})
    window.clearTimeout(reopenTimer)
    reopenTimer = window.setTimeout(() => {
      live.reconnects++
      openLive()
    }, backoff)
    backoff = Math.min(backoff * 2, 8000)
  })
}

export function closeLive() {
  window.clearTimeout(reopenTimer)
  if (es) {
    es.close()
    es = null
  }
  live.connected = false
}

let ticker: number | undefined
export function startTicker() {
  if (ticker) return
  ticker = window.setInterval(() => {
    now.value = Date.now()
    const silent = now.value - live.lastBeatMs
    const stale = !live.everConnected ? now.value - bootMs > HEARTBEAT_STALE_MS : silent > HEARTBEAT_STALE_MS
    if (stale !== live.stale) live.stale = stale
    // A stream that went silent without an error (a half-open connection after sleep or a
    // network change): reopen it (at most every 12 s).
    if (stale && es && now.value - openedAt > HEARTBEAT_STALE_MS) openLive()
    // Today's counts of detections (not pushed one by one) are re-read every 30 s.
    if (now.value - countsAt > 30_000 && live.connected) {
      countsAt = now.value
      void loadCounts().catch(() => {})
    }
    // Device changes are applied to the map at most once a second.
    if (devicesDirty) {
      devicesDirty = false
      devicesVersion.value++
      triggerRef(inventory)
    }
    void flushCases()
  }, 1000)
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'hidden') hiddenAt = Date.now()
    else if (hiddenAt && Date.now() - hiddenAt > 30_000) {
      hiddenAt = 0
      openLive()
    }
  })
  window.addEventListener('online', () => openLive())
}
const bootMs = Date.now()
let countsAt = Date.now()

export function stopAll() {
  closeLive()
  window.clearInterval(ticker)
  ticker = undefined
}

// A benchmark hook (tests/bench.mjs), off unless localStorage `csb.bench` is "1": it feeds
// synthetic device deltas through the same path as the stream's `devices` events.
try {
  if (localStorage.getItem('csb.bench') === '1')
    (window as unknown as { __csbBench: unknown }).__csbBench = Object.freeze({
      devices: (changes: { entity: string; type: string; attrs: Record<string, unknown> }[]) => onDevices({ changes }),
      ids: () => [...devices.keys()],
    })
} catch {
  /* storage blocked */
}
