// The hub's public REST API (docs/openapi.json), same origin, cookie-authenticated.

export type Role = 'viewer' | 'inspector' | 'handler' | 'operator' | 'supervisor' | 'admin'
/** `GET /api/v1/session` answers 200 even when nobody is signed in (`signed_in: false`, no
 *  name or role), so the page asks without a 401 in the console. */
export interface SessionInfo {
  signed_in?: boolean
  name: string
  role: Role
  department: string | null
  auth: boolean
}

export type Geometry =
  | { type: 'Point'; coordinates: [number, number] }
  | { type: 'LineString'; coordinates: [number, number][] }
  | { type: 'Polygon'; coordinates: [number, number][][] }
  | { type: 'MultiPolygon'; coordinates: [number, number][][][] }
export interface GeoFeature {
  id: string
  name: string
  name_en?: string | null
  kind?: string | null
  road_class?: string | null
  town?: string | null
  geometry: Geometry
}
export interface Named {
  id: string
  name: string
  name_en?: string | null
}
export interface CountyDevice extends Named {
  location: [number, number]
  town?: string | null
  department?: string | null
  model?: string | null
  kind?: string
}
export interface County {
  county: Named & { seat: [number, number]; outline?: unknown; adcode?: number | null; sample?: boolean }
  departments: Named[]
  towns: GeoFeature[]
  roads: GeoFeature[]
  zones: GeoFeature[]
  gateways: CountyDevice[]
  cameras: CountyDevice[]
  sensors: CountyDevice[]
}

export interface RuleInfo {
  rule: string
  rule_type: string
  event_type: string
  phase: string
  problem_id: string
  category?: string | null
  zone?: string | null
  snapshot?: string | null
  started_ms: number
  duration_ms: number
  value?: number | null
  count?: number | null
}
export interface Event {
  v: number
  id: string
  site: string
  device: string
  camera: string
  kind: 'detection' | 'rule'
  ts_ms: number
  objects: { label: string; score: number }[]
  rule?: RuleInfo | null
}
export interface EventsBody {
  events: Event[]
  count: number
  truncated: boolean
}
export interface AggregateGroup {
  key: string[]
  total: number
  buckets: [number, number][]
}
export interface AggregateBody {
  from_ms: number
  to_ms: number
  bucket_ms?: number | null
  by: string[]
  total: number
  groups: AggregateGroup[]
}

export type DeviceStatus = 'online' | 'offline' | 'stale' | 'never_seen'
export interface DeviceRow {
  id: string
  kind: 'gateway' | 'camera' | 'sensor'
  registered: boolean
  name?: string | null
  model?: string | null
  firmware?: string | null
  reported_version?: string | null
  town?: string | null
  department?: string | null
  installed?: string | null
  location?: [number, number] | null
  status: DeviceStatus
  detail?: string | null
  last_seen_ms?: number | null
  events: number
  telemetry: number
}
export interface SourceRow {
  id: string
  kind: 'events' | 'telemetry'
  device: string
  records: number
  bytes: number
  first_ts_ms: number
  last_ts_ms: number
  last_received_ms: number
  age_ms: number
  fresh: boolean
}
export interface Inventory {
  generated_ms: number
  stale_after_ms: number
  county?: string | null
  summary: {
    devices: number
    registered: number
    unregistered: number
    by_kind: Record<string, number>
    by_status: Record<string, number>
    by_town: Record<string, number>
    by_department: Record<string, number>
    sources: number
    stale_sources: number
    events: number
    telemetry: number
    bytes: number
  }
  devices: DeviceRow[]
  sources: SourceRow[]
}

export interface Figures {
  registered: number
  handled: number
  handled_on_time: number
  overdue_unhandled: number
  should_close: number
  closed: number
  closed_on_time: number
  reworked: number
  overdue: number
  score: number
  close_rate?: number | null
  handle_rate?: number | null
  on_time_handle_rate?: number | null
}
export interface Evaluation {
  from_ms: number
  to_ms: number
  departments: Record<string, Figures>
  towns: Record<string, Figures>
  ranking: string[]
}

export type CaseState =
  | 'reported'
  | 'registered'
  | 'rejected'
  | 'voided'
  | 'dispatched'
  | 'handling'
  | 'verifying'
  | 'closed'
  | 'suspended'
export interface CaseEntry {
  action: string
  at_ms?: number
  actor?: { id: string; role: string; department?: string | null }
  from?: string
  to?: string
  note?: string
  department?: string | null
  reason?: string
  photos?: string[]
  value?: number
  present?: boolean
  [k: string]: unknown
}
export interface CaseView {
  id: string
  source: string
  category: string
  urgency: string
  place: { town?: string | null; zone?: string | null; point?: [number, number] | null; grid?: string | null }
  state: CaseState
  created_ms: number
  department?: string | null
  deadline_ms?: number | null
  light?: 'green' | 'yellow' | 'red' | null
  camera?: string | null
  evidence?: string[]
  timeline: CaseEntry[]
  sightings?: { latest_snapshot?: string | null; recent_events?: string[]; last_event?: string | null } | null
  recheck?: { result?: { snapshot?: string | null; present?: boolean } | null; outcome?: string } | null
  extension_requested?: number | null
  actions?: string[]
}
export interface CasesBody {
  cases: CaseView[]
  count: number
  next?: string | null
}

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
  ) {
    super(message)
  }
}

/** Called on any 401: the page goes back to sign-in. */
let onUnauthorized: () => void = () => {}
export function setUnauthorizedHandler(f: () => void) {
  onUnauthorized = f
}

export async function api<T>(path: string, init?: RequestInit & { json?: unknown; quiet401?: boolean }): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' }
  let body = init?.body
  if (init?.json !== undefined) {
    headers['Content-Type'] = 'application/json'
    body = JSON.stringify(init.json)
  }
  const res = await fetch(path, { ...init, body, headers: { ...headers, ...(init?.headers as object) }, credentials: 'same-origin' })
  if (!res.ok) {
    let msg = `HTTP ${res.status}`
    try {
      const e = await res.json()
      if (e && typeof e.error === 'string') msg = e.error
    } catch {
      /* not JSON */
    }
    if (res.status === 401 && !init?.quiet401) onUnauthorized()
    throw new ApiError(res.status, msg)
  }
  if (res.status === 204) return undefined as T
  return (await res.json()) as T
}

export const q = (params: Record<string, string | number | boolean | null | undefined>) => {
  const u = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') u.set(k, String(v))
  const s = u.toString()
  return s ? '?' + s : ''
}
export const iso = (ms: number) => new Date(ms).toISOString()

/** NGSI-LD entity id of a device: urn:ngsi-ld:Camera:yuexi:gw-demo-01:cam-01 ⇄ yuexi/gw-demo-01/cam-01. */
export function wireIdOf(entity: string): string {
  const m = /^urn:ngsi-ld:[^:]+:(.*)$/.exec(entity)
  return m ? m[1].replace(/:/g, '/') : entity
}
export function entityIdOf(kind: string, wireId: string): string {
  const type = kind === 'camera' ? 'Camera' : kind === 'sensor' ? 'Sensor' : 'Gateway'
  return `urn:ngsi-ld:${type}:${wireId.replace(/\//g, ':')}`
}

export interface ActionAnswerLike {
  entry: CaseEntry
  case: CaseView
}
