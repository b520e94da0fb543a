/** Page settings from the URL: query string and hash (the hash wins). See README.md. */
export interface Settings {
  /** WebSocket URLs of the gateway nodes, tried in turn. */
  gateways: string[];
  token?: string;
  name?: string;
  room?: string;
}

export const ROOM_RE = /^[A-Za-z0-9_.:-]{1,128}$/;

export function readSettings(loc: Location): Settings {
  const p = new URLSearchParams(loc.search);
  const hash = loc.hash.replace(/^#\??/, '');
  if (hash.includes('=')) for (const [k, v] of new URLSearchParams(hash)) p.set(k, v);
  const gateways = (p.get('gateways') ?? p.get('gateway') ?? '')
    .split(',')
    .map((s) => s.trim().replace(/^http/, 'ws'))
    .filter((s) => /^wss?:\/\//.test(s));
  if (!gateways.length) gateways.push(`${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/ws`);
  const s: Settings = { gateways };
  const token = p.get('token')?.trim();
  const name = p.get('name')?.trim();
  const room = p.get('room')?.trim();
  if (token) s.token = token;
  if (name) s.name = name.slice(0, 40);
  if (room && ROOM_RE.test(room)) s.room = room;
  return s;
}

/** The claims of a JWT, decoded without checking it (the gateway checks it): for the display name. */
export function jwtClaims(token: string): { sub?: string; name?: string; exp?: number } {
  try {
    const part = token.split('.')[1] ?? '';
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'));
    const bytes = Uint8Array.from(json, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : {};
  } catch {
    return {};
  }
}
