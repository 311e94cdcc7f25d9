// The REST API client: the token from sessionStorage in Authorization: Bearer, a timeout on
// every call, and the API's {"detail": ...} message in every error.

const TOKEN_KEY = "relaysync.token";
export const CALL_TIMEOUT_MS = 15000;

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status; // 0: no answer (network, timeout)
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

// Called with the API's message when a token is refused (401): the console logs out.
let onUnauthorized = () => {};
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

function describe(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    // FastAPI's validation errors: [{loc, msg, ...}]
    return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  }
  return JSON.stringify(detail);
}

async function errorOf(response, what) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    if (body && body.detail !== undefined) detail = describe(body.detail);
  } catch {
    // not JSON: keep the status text
  }
  return new ApiError(response.status, `${what}: ${response.status} ${detail}`);
}

// Returns the parsed JSON answer (null for 204); throws ApiError.
export async function api(path, { method = "GET", body, timeoutMs = CALL_TIMEOUT_MS } = {}) {
  const what = `${method} ${path.split("?")[0]}`;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  const headers = { Authorization: `Bearer ${token.get()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: controller.signal,
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
  } catch (err) {
    const why = err.name === "AbortError" ? `no answer within ${timeoutMs / 1000} s` : err.message;
    throw new ApiError(0, `${what}: ${why}`);
  } finally {
    clearTimeout(timer);
  }
  if (response.status === 401) {
    const error = await errorOf(response, what);
    onUnauthorized(error.message);
    throw error;
  }
  if (!response.ok) throw await errorOf(response, what);
  return response.status === 204 ? null : response.json();
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") q.set(key, String(value));
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}
