/** Small pieces of the screen shared by its parts: avatars, message snippets, links. */
import type { HistoryMessage } from '../../js/src/index.js';
import { h, type Child } from './dom.js';
import { bodyText, hue, initials } from './format.js';

export function avatar(name: string, small = false): HTMLElement {
  const a = h('span', { class: small ? 'avatar sm' : 'avatar', 'aria-hidden': 'true' }, initials(name));
  a.style.setProperty('--h', String(hue(name)));
  return a;
}

/** A message on one line, at most 80 characters (replies, the reply bar). */
export function snippet(m: HistoryMessage): string {
  if (m.deleted) return '(deleted)';
  const t = bodyText(m.body).text.replace(/\s+/g, ' ');
  return t.length > 80 ? `${t.slice(0, 79)}…` : t;
}

/** Text with http(s) links as anchors: text nodes and elements only, never HTML. */
export function linkify(text: string): Child[] {
  const out: Child[] = [];
  const re = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/g;
  let last = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    out.push(h('a', { href: m[0], target: '_blank', rel: 'noopener noreferrer' }, m[0]));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}
