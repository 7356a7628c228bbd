// A tiny history router (the hub serves index.html for every non-API path).
import { ref } from 'vue'

export const path = ref(location.pathname)
export const query = ref(new URLSearchParams(location.search))

export function go(to: string, replace = false) {
  const u = new URL(to, location.origin)
  if (u.pathname + u.search === location.pathname + location.search) return
  if (replace) history.replaceState(null, '', u.pathname + u.search)
  else history.pushState(null, '', u.pathname + u.search)
  path.value = u.pathname
  query.value = new URLSearchParams(u.search)
}
window.addEventListener('popstate', () => {
  path.value = location.pathname
  query.value = new URLSearchParams(location.search)
})
