import type { Json } from '../../js/src/index.js';

/** A message body as the page shows it: `{text, name?}` as text, anything else as JSON. */
export function bodyText(body: Json | undefined): { text: string; json: boolean } {
  if (body && typeof body === 'object' && !Array.isArray(body) && typeof body['text'] === 'string') {
    return { text: body['text'], json: false };
  }
  return { text: JSON.stringify(body ?? null), json: true };
}

/** The display name a body carries, if any. */
export function bodyName(body: Json | undefined): string | undefined {
  if (body && typeof body === 'object' && !Array.isArray(body) && typeof body['name'] === 'string') {
    const n = body['name'].trim().slice(0, 40);
    return n || undefined;
  }
  return undefined;
}

export function initials(name: string): string {
  const words = name.replace(/^guest-/, '').split(/[\s._-]+/).filter(Boolean);
  const a = [...(words[0] ?? '?')][0] ?? '?';
  const b = words.length > 1 ? ([...words[1]!][0] ?? '') : '';
  return (a + b).toUpperCase();
}

/** A stable hue for a name (avatars). */
export function hue(name: string): number {
  let x = 0;
  for (let i = 0; i < name.length; i++) x = (x * 31 + name.charCodeAt(i)) >>> 0;
  return x % 360;
}

const pad = (n: number) => String(n).padStart(2, '0');
export const clock = (ts: number): string => {
  const d = new Date(ts);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
};

export const dayKey = (ts: number): string => new Date(ts).toDateString();

export function dayLabel(ts: number, now = Date.now()): string {
  const k = dayKey(ts);
  if (k === dayKey(now)) return 'Today';
  if (k === dayKey(now - 86_400_000)) return 'Yesterday';
  return new Date(ts).toLocaleDateString(undefined, { weekday: 'long', month: 'long', day: 'numeric', year: 'numeric' });
}

/** "alice", "alice and bob", "alice, bob and carol", "4 people". */
export function people(names: string[]): string {
  if (names.length > 3) return `${names.length} people`;
  if (names.length <= 1) return names[0] ?? '';
  return `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
}
