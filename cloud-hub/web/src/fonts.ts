import './fonts.css'
/** Resolves once the bundled CJK font (both subsets) is loaded, or after 5 s whatever happens. */
export const fontsReady: Promise<void> = Promise.race([
  Promise.all([
    document.fonts.load('16px "Noto Sans SC"', '城市超脑'),
    document.fonts.load('16px "Noto Sans SC"', 'Aa0'),
  ]).then(() => undefined, () => undefined),
  new Promise<void>((r) => setTimeout(r, 5000)),
])
