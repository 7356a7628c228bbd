// A small i18n: zh-CN first, English switchable; the choice is kept in localStorage. Numbers,
// dates and times go through Intl with the current locale.
import { ref, computed } from 'vue'

export type Locale = 'zh-CN' | 'en'
const KEY = 'csb.locale'

function initial(): Locale {
  try {
    const v = localStorage.getItem(KEY)
    if (v === 'en' || v === 'zh-CN') return v
  } catch {
    /* storage blocked: default */
  }
  return 'zh-CN'
}

export const locale = ref<Locale>(initial())
export const isZh = computed(() => locale.value === 'zh-CN')

export function setLocale(l: Locale) {
  locale.value = l
  try {
    localStorage.setItem(KEY, l)
  } catch {
    /* ignore */
  }
  document.documentElement.lang = l
}
document.documentElement.lang = locale.value

const zh = {
  appName: '城市超脑',
  'nav.cockpit': '驾驶舱',
  'nav.map': '孪生地图',
  'nav.cases': '案件',
  'nav.inventory': '家底',
  'hdr.updated': '数据更新于 {t}',
  'hdr.stale': '数据已过期 · 最后更新 {t}',
  'hdr.staleNever': '数据已过期 · 尚未收到数据',
  'hdr.connecting': '正在连接…',
  'hdr.signOut': '退出',
  'hdr.lang': 'English',
  'role.viewer': '查看者',
  'role.inspector': '巡查员',
  'role.handler': '处置人员',
  'role.operator': '值班员',
  'role.supervisor': '督办',
  'role.admin': '管理员',
  'signin.title': '登录',
  'signin.token': 'API 令牌',
  'signin.hint': '请输入管理员签发的 API 令牌(cloud-hub token add)。',
  'signin.submit': '登录',
  'signin.bad': '令牌无效',
  'signin.error': '登录失败:{e}',
  noData: '暂无数据',
  loading: '加载中…',
  error: '加载失败:{e}',
  more: '加载更多',
  all: '全部',
  close: '关闭',
  cancel: '取消',
  submit: '提交',
  exportCsv: '导出 CSV',
  count: '数量',
  total: '合计',
  // cockpit
  'ck.devices': '设备在线',
  'ck.onlineRate': '在线率',
  'ck.deviceTotal': '设备总数',
  'ck.eventsToday': '今日事件',
  'ck.eventsByType': '今日事件类型',
  'ck.detections': '目标检测',
  'ck.cases': '案件概况',
  'ck.open': '在办案件',
  'ck.overdue': '超期案件',
  'ck.closeRate': '结案率',
  'ck.onTimeRate': '按期处置率',
  'ck.bySource': '案件来源',
  'ck.hotCategories': '热点类别',
  'ck.deptRanking': '部门排名',
  'ck.score': '综合得分',
  'ck.trend': '近 7 日趋势',
  'ck.trendEvents': '规则事件',
  'ck.trendDetections': '检测事件',
  'ck.trendCases': '新立案件',
  'ck.sources': '数据来源与数据量',
  'ck.sourcesCount': '数据源',
  'ck.staleSources': '过期数据源',
  'ck.records': '记录数',
  'ck.volume': '数据量',
  'ck.feed': '实时事件',
  'ck.alarmsOnly': '仅告警',
  'ck.map': '县域态势',
  // status
  'status.online': '在线',
  'status.offline': '离线',
  'status.stale': '失联',
  'status.never_seen': '未上线',
  'kind.gateway': '网关',
  'kind.camera': '摄像机',
  'kind.sensor': '传感器',
  'kind.events': '事件',
  'kind.telemetry': '遥测',
  // events
  'ev.detection': '检测',
  'ev.rule': '规则事件',
  'ev.objects': '{n} 个目标',
  'et.illegal_parking': '违法停车',
  'et.traffic_flow': '交通流量',
  'et.waterlogging': '道路积水',
  'et.crowd': '人群聚集',
  'et.intrusion': '区域入侵',
  'et.street_vending': '占道经营',
  'phase.start': '开始',
  'phase.end': '结束',
  'phase.update': '持续',
  'phase.instant': '瞬时',
  // map
  'map.layers': '图层',
  'map.viewCounty': '全县',
  'map.viewSeat': '县城',
  'map.devices': '设备',
  'map.zoomIn': '点击放大查看各设备',
  'map.cases': '在办案件',
  'map.closed': '已结案',
  'map.heat': '事件热力',
  'map.roads': '道路',
  'map.towns': '乡镇',
  'map.replay': '24 小时回放',
  'map.play': '播放',
  'map.pause': '暂停',
  'map.window': '{from} – {to}',
  'map.eventsInWindow': '{n} 个事件',
  'map.list': '清单',
  'map.details': '详情',
  'map.attrs': '实时属性',
  'map.snapshot': '最新抓拍',
  'map.noSnapshot': '暂无抓拍',
  'map.outline': '县界',
  'map.case': '案件',
  'map.device': '设备',
  'map.listHint': '在办案件与非在线设备',
  // cases
  'cs.title': '案件',
  'cs.state': '状态',
  'cs.category': '类别',
  'cs.department': '部门',
  'cs.town': '乡镇',
  'cs.light': 'SLA',
  'cs.source': '来源',
  'cs.created': '上报时间',
  'cs.deadline': '时限',
  'cs.countdown': '剩余',
  'cs.overdueBy': '超期 {d}',
  'cs.left': '剩 {d}',
  'cs.urgency': '紧急程度',
  'cs.place': '位置',
  'cs.camera': '摄像机',
  'cs.evidence': '证据',
  'cs.before': '处置前',
  'cs.first': '首次发现',
  'cs.latest': '最近一次',
  'cs.after': '处置后',
  'cs.timeline': '时间线',
  'cs.actions': '操作',
  'cs.noActions': '当前无可执行的操作',
  'cs.select': '选择一个案件查看详情',
  'cs.openOnly': '仅在办',
  'cs.note': '备注',
  'cs.photos': '现场照片',
  'cs.photoCount': '已选 {n} 张',
  'cs.photoBad': '无法读取图片 {name}',
  'cs.reason': '原因',
  'cs.value': '延期时长',
  'cs.photo': '照片',
  'cs.done': '已提交',
  'cs.recheck': 'AI 核查',
  'cs.actor': '操作人',
  'light.green': '正常',
  'light.yellow': '预警',
  'light.red': '超时',
  'light.none': '—',
  'urgency.normal': '一般',
  'urgency.urgent': '紧急',
  'state.reported': '上报',
  'state.registered': '立案',
  'state.rejected': '不予立案',
  'state.voided': '作废',
  'state.dispatched': '已派遣',
  'state.handling': '处置中',
  'state.verifying': '核查中',
  'state.closed': '结案',
  'state.suspended': '挂账',
  'source.video_ai': '视频 AI',
  'source.sensor': '传感器',
  'source.citizen': '市民',
  'source.inspector': '巡查员',
  'source.superior': '上级交办',
  'reason.false_positive': '误报',
  'reason.duplicate': '重复',
  'reason.out_of_scope': '不属于受理范围',
  'act.report': '上报',
  'act.register': '立案',
  'act.reject': '不予立案',
  'act.void': '作废',
  'act.dispatch': '派遣',
  'act.accept': '签收',
  'act.return': '回退',
  'act.report_handled': '处置反馈',
  'act.close': '结案',
  'act.rework': '返工',
  'act.request_extension': '申请延期',
  'act.approve_extension': '批准延期',
  'act.deny_extension': '驳回延期',
  'act.suspend': '挂账',
  'act.resume': '恢复',
  'act.supervise': '督办',
  'act.sla_warning': 'SLA 预警',
  'act.sla_overdue': 'SLA 超时',
  'act.sla_reminder': '督办提醒',
  'act.merge': '合并',
  'act.recheck_requested': '请求 AI 核查',
  'act.recheck_done': 'AI 核查完成',
  'act.recheck_unanswered': 'AI 核查无应答',
  'act.notify_failed': '通知失败',
  // inventory
  'inv.title': '家底',
  'inv.devices': '设备台账',
  'inv.byKind': '按类型',
  'inv.byStatus': '按状态',
  'inv.byTown': '按乡镇',
  'inv.byDept': '按部门',
  'inv.unregistered': '未登记设备',
  'inv.sources': '数据源',
  'inv.freshness': '新鲜度',
  'inv.fresh': '新鲜',
  'inv.notFresh': '过期',
  'inv.id': '编号',
  'inv.name': '名称',
  'inv.kind': '类型',
  'inv.model': '型号',
  'inv.firmware': '固件',
  'inv.status': '状态',
  'inv.lastSeen': '最后联系',
  'inv.events': '事件数',
  'inv.telemetry': '遥测数',
  'inv.records': '记录数',
  'inv.bytes': '字节',
  'inv.lastReceived': '最后接收',
  'inv.age': '距今',
  'inv.device': '设备',
  'inv.search': '搜索编号或名称',
  'inv.registered': '已登记',
  'inv.summary': '{n} 台设备 · {r} 已登记 · {u} 未登记',
  yes: '是',
  no: '否',
}

type Key = keyof typeof zh

const en: Record<Key, string> = {
  appName: 'City Super Brain',
  'nav.cockpit': 'Cockpit',
  'nav.map': 'Twin map',
  'nav.cases': 'Cases',
  'nav.inventory': 'Inventory',
  'hdr.updated': 'Data updated {t}',
  'hdr.stale': 'Data stale since {t}',
  'hdr.staleNever': 'Data stale · nothing received yet',
  'hdr.connecting': 'Connecting…',
  'hdr.signOut': 'Sign out',
  'hdr.lang': '中文',
  'role.viewer': 'Viewer',
  'role.inspector': 'Inspector',
  'role.handler': 'Handler',
  'role.operator': 'Operator',
  'role.supervisor': 'Supervisor',
  'role.admin': 'Admin',
  'signin.title': 'Sign in',
  'signin.token': 'API token',
  'signin.hint': 'Enter the API token your administrator issued (cloud-hub token add).',
  'signin.submit': 'Sign in',
  'signin.bad': 'Invalid token',
  'signin.error': 'Sign-in failed: {e}',
  noData: 'No data',
  loading: 'Loading…',
  error: 'Failed to load: {e}',
  more: 'Load more',
  all: 'All',
  close: 'Close',
  cancel: 'Cancel',
  submit: 'Submit',
  exportCsv: 'Export CSV',
  count: 'Count',
  total: 'Total',
  'ck.devices': 'Devices online',
  'ck.onlineRate': 'Online rate',
  'ck.deviceTotal': 'Devices',
  'ck.eventsToday': 'Events today',
  'ck.eventsByType': 'Events today by type',
  'ck.detections': 'Detections',
  'ck.cases': 'Cases',
  'ck.open': 'Open cases',
  'ck.overdue': 'Overdue',
  'ck.closeRate': 'Close rate',
  'ck.onTimeRate': 'On-time rate',
  'ck.bySource': 'Cases by source',
  'ck.hotCategories': 'Hot categories',
  'ck.deptRanking': 'Department ranking',
  'ck.score': 'Score',
  'ck.trend': '7-day trend',
  'ck.trendEvents': 'Rule events',
  'ck.trendDetections': 'Detections',
  'ck.trendCases': 'New cases',
  'ck.sources': 'Data sources and volume',
  'ck.sourcesCount': 'Sources',
  'ck.staleSources': 'Stale sources',
  'ck.records': 'Records',
  'ck.volume': 'Volume',
  'ck.feed': 'Live events',
  'ck.alarmsOnly': 'Alarms only',
  'ck.map': 'County situation',
  'status.online': 'Online',
  'status.offline': 'Offline',
  'status.stale': 'Stale',
  'status.never_seen': 'Never seen',
  'kind.gateway': 'Gateway',
  'kind.camera': 'Camera',
  'kind.sensor': 'Sensor',
  'kind.events': 'Events',
  'kind.telemetry': 'Telemetry',
  'ev.detection': 'Detection',
  'ev.rule': 'Rule event',
  'ev.objects': '{n} objects',
  'et.illegal_parking': 'Illegal parking',
  'et.traffic_flow': 'Traffic flow',
  'et.waterlogging': 'Waterlogging',
  'et.crowd': 'Crowd',
  'et.intrusion': 'Intrusion',
  'et.street_vending': 'Street vending',
  'phase.start': 'start',
  'phase.end': 'end',
  'phase.update': 'ongoing',
  'phase.instant': 'instant',
  'map.layers': 'Layers',
  'map.viewCounty': 'County',
  'map.viewSeat': 'County seat',
  'map.devices': 'Devices',
  'map.zoomIn': 'Click to zoom in to each device',
  'map.cases': 'Open cases',
  'map.closed': 'Closed cases',
  'map.heat': 'Event heat',
  'map.roads': 'Roads',
  'map.towns': 'Towns',
  'map.replay': '24 h replay',
  'map.play': 'Play',
  'map.pause': 'Pause',
  'map.window': '{from} – {to}',
  'map.eventsInWindow': '{n} events',
  'map.list': 'List',
  'map.details': 'Details',
  'map.attrs': 'Live attributes',
  'map.snapshot': 'Latest snapshot',
  'map.noSnapshot': 'No snapshot',
  'map.outline': 'County outline',
  'map.case': 'Case',
  'map.device': 'Device',
  'map.listHint': 'Open cases and devices not online',
  'cs.title': 'Cases',
  'cs.state': 'State',
  'cs.category': 'Category',
  'cs.department': 'Department',
  'cs.town': 'Town',
  'cs.light': 'SLA',
  'cs.source': 'Source',
  'cs.created': 'Reported',
  'cs.deadline': 'Deadline',
  'cs.countdown': 'Time left',
  'cs.overdueBy': 'overdue {d}',
  'cs.left': '{d} left',
  'cs.urgency': 'Urgency',
  'cs.place': 'Place',
  'cs.camera': 'Camera',
  'cs.evidence': 'Evidence',
  'cs.before': 'Before',
  'cs.first': 'First seen',
  'cs.latest': 'Latest',
  'cs.after': 'After',
  'cs.timeline': 'Timeline',
  'cs.actions': 'Actions',
  'cs.noActions': 'No action available now',
  'cs.select': 'Select a case to see its details',
  'cs.openOnly': 'Open only',
  'cs.note': 'Note',
  'cs.photos': 'Photos on site',
  'cs.photoCount': '{n} selected',
  'cs.photoBad': 'Cannot read the picture {name}',
  'cs.reason': 'Reason',
  'cs.value': 'Extension',
  'cs.photo': 'Photo',
  'cs.done': 'Done',
  'cs.recheck': 'AI re-check',
  'cs.actor': 'By',
  'light.green': 'On track',
  'light.yellow': 'Warning',
  'light.red': 'Overdue',
  'light.none': '—',
  'urgency.normal': 'Normal',
  'urgency.urgent': 'Urgent',
  'state.reported': 'Reported',
  'state.registered': 'Registered',
  'state.rejected': 'Rejected',
  'state.voided': 'Voided',
  'state.dispatched': 'Dispatched',
  'state.handling': 'Handling',
  'state.verifying': 'Verifying',
  'state.closed': 'Closed',
  'state.suspended': 'Suspended',
  'source.video_ai': 'Video AI',
  'source.sensor': 'Sensor',
  'source.citizen': 'Citizen',
  'source.inspector': 'Inspector',
  'source.superior': 'Superior',
  'reason.false_positive': 'False positive',
  'reason.duplicate': 'Duplicate',
  'reason.out_of_scope': 'Out of scope',
  'act.report': 'Report',
  'act.register': 'Register',
  'act.reject': 'Reject',
  'act.void': 'Void',
  'act.dispatch': 'Dispatch',
  'act.accept': 'Accept',
  'act.return': 'Return',
  'act.report_handled': 'Report handled',
  'act.close': 'Close',
  'act.rework': 'Rework',
  'act.request_extension': 'Request extension',
  'act.approve_extension': 'Approve extension',
  'act.deny_extension': 'Deny extension',
  'act.suspend': 'Suspend',
  'act.resume': 'Resume',
  'act.supervise': 'Supervise',
  'act.sla_warning': 'SLA warning',
  'act.sla_overdue': 'SLA overdue',
  'act.sla_reminder': 'Reminder',
  'act.merge': 'Merged',
  'act.recheck_requested': 'AI re-check requested',
  'act.recheck_done': 'AI re-check done',
  'act.recheck_unanswered': 'AI re-check unanswered',
  'act.notify_failed': 'Notification failed',
  'inv.title': 'Inventory',
  'inv.devices': 'Devices',
  'inv.byKind': 'By kind',
  'inv.byStatus': 'By status',
  'inv.byTown': 'By town',
  'inv.byDept': 'By department',
  'inv.unregistered': 'Unregistered devices',
  'inv.sources': 'Data sources',
  'inv.freshness': 'Freshness',
  'inv.fresh': 'Fresh',
  'inv.notFresh': 'Stale',
  'inv.id': 'ID',
  'inv.name': 'Name',
  'inv.kind': 'Kind',
  'inv.model': 'Model',
  'inv.firmware': 'Firmware',
  'inv.status': 'Status',
  'inv.lastSeen': 'Last seen',
  'inv.events': 'Events',
  'inv.telemetry': 'Telemetry',
  'inv.records': 'Records',
  'inv.bytes': 'Bytes',
  'inv.lastReceived': 'Last received',
  'inv.age': 'Age',
  'inv.device': 'Device',
  'inv.search': 'Search id or name',
  'inv.registered': 'Registered',
  'inv.summary': '{n} devices · {r} registered · {u} unregistered',
  yes: 'yes',
  no: 'no',
}

const tables: Record<Locale, Record<string, string>> = { 'zh-CN': zh, en }

/** Translates `key`, filling `{name}` placeholders; an unknown key shows the key's last part. */
export function t(key: string, vars?: Record<string, string | number>): string {
  let s = tables[locale.value][key] ?? tables['zh-CN'][key]
  if (s === undefined) s = key.slice(key.indexOf('.') + 1)
  if (vars) s = s.replace(/\{(\w+)\}/g, (_, k) => String(vars[k] ?? ''))
  return s
}
/** A translation if one exists, else the fallback (ids from the API we have no label for). */
export function tOr(key: string, fallback: string): string {
  return tables[locale.value][key] ?? fallback
}

const nfCache = new Map<string, Intl.NumberFormat>()
function nf(opts: Intl.NumberFormatOptions): Intl.NumberFormat {
  const k = locale.value + JSON.stringify(opts)
  let f = nfCache.get(k)
  if (!f) nfCache.set(k, (f = new Intl.NumberFormat(locale.value, opts)))
  return f
}
export const fmtNum = (n: number | null | undefined, digits = 0) =>
  n == null || Number.isNaN(n) ? '—' : nf({ maximumFractionDigits: digits }).format(n)
export const fmtPct = (r: number | null | undefined, digits = 1) =>
  r == null || Number.isNaN(r) ? '—' : nf({ style: 'percent', minimumFractionDigits: digits, maximumFractionDigits: digits }).format(r)
export function fmtBytes(b: number | null | undefined): string {
  if (b == null) return '—'
  const u = ['B', 'KB', 'MB', 'GB', 'TB']
  let i = 0
  let v = b
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024
    i++
  }
  return `${fmtNum(v, i === 0 ? 0 : 1)} ${u[i]}`
}

function dtf(opts: Intl.DateTimeFormatOptions): Intl.DateTimeFormat {
  const k = 'd' + locale.value + JSON.stringify(opts)
  let f = nfCache.get(k) as unknown as Intl.DateTimeFormat | undefined
  if (!f) {
    f = new Intl.DateTimeFormat(locale.value === 'en' ? 'en-GB' : 'zh-CN', { hour12: false, ...opts })
    nfCache.set(k, f as unknown as Intl.NumberFormat)
  }
  return f
}
export const fmtTime = (ms: number | null | undefined) =>
  ms == null ? '—' : dtf({ hour: '2-digit', minute: '2-digit', second: '2-digit' }).format(ms)
export const fmtHm = (ms: number | null | undefined) => (ms == null ? '—' : dtf({ hour: '2-digit', minute: '2-digit' }).format(ms))
// English dates spell the month ("7 Dec"): "07/12" reads as July to half the readers.
export const fmtDateTime = (ms: number | null | undefined) =>
  ms == null
    ? '—'
    : dtf({ month: locale.value === 'en' ? 'short' : '2-digit', day: locale.value === 'en' ? 'numeric' : '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' }).format(ms)
export const fmtDay = (ms: number) =>
  dtf({ month: locale.value === 'en' ? 'short' : '2-digit', day: locale.value === 'en' ? 'numeric' : '2-digit' }).format(ms)
export const fmtFullDate = (ms: number) =>
  dtf({ year: 'numeric', month: 'long', day: 'numeric', weekday: 'long' }).format(ms)

/** A duration as "2 h 05 min" / "2 小时 05 分" (largest two units). */
export function fmtDuration(ms: number): string {
  const s = Math.max(0, Math.round(Math.abs(ms) / 1000))
  const d = Math.floor(s / 86400)
  const h = Math.floor((s % 86400) / 3600)
  const m = Math.floor((s % 3600) / 60)
  const sec = s % 60
  const zhU = isZh.value
  const U = zhU ? { d: '天', h: '小时', m: '分', s: '秒' } : { d: 'd', h: 'h', m: 'min', s: 's' }
  const p = (n: number, u: string) => (zhU ? `${n}${u}` : `${n} ${u}`)
  if (d > 0) return `${p(d, U.d)} ${p(h, U.h)}`
  if (h > 0) return `${p(h, U.h)} ${p(m, U.m)}`
  if (m > 0) return `${p(m, U.m)} ${p(sec, U.s)}`
  return p(sec, U.s)
}
