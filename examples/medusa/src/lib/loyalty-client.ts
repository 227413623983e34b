/**
 * A small client for the Loyalty Points service, for use inside a Medusa v2 backend.
 *
 * It authenticates with a secret key (`sk_…`, from `POST /admin/api-keys` or
 * `loyalty api-key create`) exactly as Medusa's own JS SDK sends its `apiKey` option:
 * `Authorization: Basic base64("sk_…:")`. Every write carries an Idempotency-Key, so a retry
 * of the same step (Medusa re-runs a failed subscriber) is answered from the service's
 * record instead of being applied twice.
 */

export type LoyaltyConfig = {
  /** The service's base URL, e.g. https://loyalty.internal:9000 */
  url: string
  /** A secret API key, sk_… */
  apiKey: string
  /** Per request, in milliseconds. */
  timeoutMs?: number
}

export type Adjustment = {
  id: string
  customer_id: string
  type: "adjustment" | "reversal" | "expiration" | "release"
  delta: number
  reference: string | null
  metadata: Record<string, string> | null
  reversed_points?: number
}

/** An error answer of the service: its status and its `message`, which says the precise
 * reason on its own (for example "Insufficient points: the current balance is 12, which
 * cannot cover -40"). */
export class LoyaltyError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly type: string
  ) {
    super(message)
    this.name = "LoyaltyError"
  }
}

type Request = {
  method?: "GET" | "POST"
  body?: unknown
  query?: Record<string, string>
  idempotencyKey?: string
}

export class LoyaltyClient {
  private readonly authorization: string

  constructor(private readonly config: LoyaltyConfig) {
    if (!config.apiKey.startsWith("sk_")) {
      throw new Error("the Loyalty Points API key must be a secret key, sk_…")
    }
    this.authorization = `Basic ${Buffer.from(`${config.apiKey}:`).toString("base64")}`
  }

  async request<T>(path: string, { method = "GET", body, query, idempotencyKey }: Request = {}) {
    const url = new URL(path, this.config.url)
    for (const [name, value] of Object.entries(query ?? {})) {
      url.searchParams.set(name, value)
    }
    const headers: Record<string, string> = {
      accept: "application/json",
      authorization: this.authorization,
    }
    if (body !== undefined) headers["content-type"] = "application/json"
    if (idempotencyKey) headers["idempotency-key"] = idempotencyKey
    const response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(this.config.timeoutMs ?? 10_000),
    })
    const payload = (await response.json().catch(() => ({}))) as Record<string, unknown>
    if (!response.ok) {
      throw new LoyaltyError(
        String(payload.message ?? response.statusText),
        response.status,
        String(payload.type ?? "unknown")
      )
    }
    return payload as T
  }

  createCustomer(customer: { id: string; email: string; first_name?: string | null }) {
    return this.request<{ customer: { id: string } }>("/admin/customers", {
      method: "POST",
      body: customer,
      idempotencyKey: `medusa-customer-${customer.id}`,
    })
  }

  adjust(
    body: {
      customer_id: string
      delta: number
      reason?: string
      reference?: string
      metadata?: Record<string, string>
    },
    idempotencyKey: string
  ) {
    return this.request<{ id: string; balance_after: number }>("/admin/loyalty/points/adjust", {
      method: "POST",
      body,
      idempotencyKey,
    })
  }

  /** The adjustments recorded with this reference (at most one per customer). */
  async adjustmentsByReference(reference: string, customerId?: string) {
    const query: Record<string, string> = { reference, type: "adjustment" }
    if (customerId) query.customer_id = customerId
    const page = await this.request<{ adjustments: Adjustment[] }>("/admin/loyalty/adjustments", {
      query,
    })
    return page.adjustments
  }

  /** The adjustment with `reversed_points`: how much of it is reversed so far. */
  async adjustment(id: string) {
    return (await this.request<{ adjustment: Adjustment }>(`/admin/loyalty/adjustments/${id}`))
      .adjustment
  }

  /** Reverses `points` of an adjustment, or all that is left of it when omitted. */
  reverse(id: string, idempotencyKey: string, points?: number, reason?: string) {
    return this.request<{ id: string; balance_after: number; reverses: string }>(
      `/admin/loyalty/adjustments/${id}/reverse`,
      { method: "POST", body: { points, reason }, idempotencyKey }
    )
  }
}

/** The client configured from the environment of the Medusa backend. */
export function loyaltyFromEnv(env: NodeJS.ProcessEnv = process.env): LoyaltyClient {
  const url = env.LOYALTY_URL
  const apiKey = env.LOYALTY_API_KEY
  if (!url || !apiKey) {
    throw new Error("set LOYALTY_URL and LOYALTY_API_KEY to award loyalty points")
  }
  return new LoyaltyClient({ url, apiKey })
}
