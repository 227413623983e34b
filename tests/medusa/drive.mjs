// Drives the Loyalty Points service with Medusa's own JS SDK (@medusajs/js-sdk, pinned in
// package.json), as a Medusa backend or admin extension would, and prints what it saw as one
// JSON object on stdout. tests/test_medusa.py runs it against a real server and asserts on it.
//
// Environment: LOYALTY_URL, LOYALTY_EMAIL, LOYALTY_PASSWORD, LOYALTY_SCENARIO ("jwt" or
// "api_key"), LOYALTY_RUN (a tag that makes this run's emails and references unique),
// LOYALTY_WITH_REFRESH ("1": also sdk.auth.refresh() and sdk.admin.user.me()).
import Medusa, { FetchError } from "@medusajs/js-sdk"

const env = (name) => {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is not set`)
  return value
}
const baseUrl = env("LOYALTY_URL")
const email = env("LOYALTY_EMAIL")
const password = env("LOYALTY_PASSWORD")
const scenario = env("LOYALTY_SCENARIO")
const run = env("LOYALTY_RUN")

// Every request the SDK makes goes through the global fetch: record what it sent, so the
// test can check the Authorization header's form without trusting our reading of the SDK.
const sent = []
const realFetch = globalThis.fetch
globalThis.fetch = (input, init) => {
  const headers = new Headers(init?.headers)
  sent.push({
    method: init?.method ?? "GET",
    url: String(input),
    authorization: headers.get("authorization"),
    content_type: headers.get("content-type"),
  })
  return realFetch(input, init)
}

// The SDK throws FetchError for any status >= 300, keeping only the status and the body's
// `message`: this is all a Medusa developer sees of an error.
async function failure(promise) {
  try {
    await promise
  } catch (error) {
    if (error instanceof FetchError) {
      return { fetch_error: true, status: error.status, message: error.message }
    }
    return { fetch_error: false, name: error?.name, message: String(error?.message ?? error) }
  }
  return null
}

const adjust = (sdk, body, key, query) =>
  sdk.client.fetch("/admin/loyalty/points/adjust", {
    method: "POST",
    body,
    query,
    headers: key ? { "Idempotency-Key": key } : undefined,
  })

// What any client (logged in or keyed) does: a customer with Medusa's fields, an adjustment
// with its history, a replay of it, the balance, and the errors the SDK surfaces.
async function drive(sdk, tag) {
  const out = {}
  const { customer } = await sdk.client.fetch("/admin/customers", {
    method: "POST",
    body: {
      email: `${tag}-${run}@example.com`,
      first_name: "Ada",
      phone: "+44 20 7946 0000",
      company_name: "Analytical Engines Ltd",
      metadata: { medusa_customer_id: `cus_${run}` },
    },
  })
  out.customer = customer
  const key = `${tag}-${run}-order-1`
  const body = { customer_id: customer.id, delta: 150.5, reason: "order", reference: `order_${run}` }
  out.adjust = await adjust(sdk, body, key, { include_history: true })
  out.replay = await adjust(sdk, body, key, { include_history: true })
  out.balance = await sdk.client.fetch(`/admin/loyalty/points/${customer.id}`)
  out.float_error = await failure(
    adjust(sdk, { customer_id: customer.id, delta: 0.1 + 0.2 }, `${tag}-${run}-float`)
  )
  out.zero_error = await failure(adjust(sdk, { customer_id: customer.id, delta: 0 }))
  out.overdraw_error = await failure(adjust(sdk, { customer_id: customer.id, delta: -1000 }))
  out.unknown_customer_error = await failure(
    sdk.client.fetch(`/admin/customers/cus_nobody_${run}`)
  )
  out.balance_after_errors = await sdk.client.fetch(`/admin/loyalty/points/${customer.id}`)
  return out
}

async function jwt() {
  const out = {}
  // In Node there is no localStorage, so the SDK's default is "nostore": login succeeds but
  // the token is thrown away and the next call goes out without it.
  const forgetful = new Medusa({ baseUrl, auth: { type: "jwt" } })
  out.default_login = typeof (await forgetful.auth.login("user", "emailpass", { email, password }))
  out.default_storage_error = await failure(forgetful.client.fetch("/admin/customers"))

  const start = sent.length
  const sdk = new Medusa({ baseUrl, auth: { type: "jwt", jwtTokenStorageMethod: "memory" } })
  out.wrong_password_error = await failure(
    sdk.auth.login("user", "emailpass", { email, password: `${password}-wrong` })
  )
  const token = await sdk.auth.login("user", "emailpass", { email, password })
  out.token_parts = typeof token === "string" ? token.split(".").length : null
  out.stored_token_is_returned = (await sdk.client.getToken()) === token
  Object.assign(out, await drive(sdk, "jwt"))
  if (process.env.LOYALTY_WITH_REFRESH === "1") {
    // sdk.auth.refresh() posts no body (but Content-Type: application/json) to
    // /auth/token/refresh and stores the new token, which sdk.admin.user.me() then sends.
    const refreshed = await sdk.auth.refresh()
    out.refreshed_token_parts = refreshed.token.split(".").length
    out.refreshed_token_is_stored = (await sdk.client.getToken()) === refreshed.token
    out.me = await sdk.admin.user.me()
  }
  out.sent = sent.slice(start).filter((request) => request.url.includes("/admin/"))
  return out
}

async function apiKey() {
  const out = {}
  const admin = new Medusa({ baseUrl, auth: { type: "jwt", jwtTokenStorageMethod: "memory" } })
  await admin.auth.login("user", "emailpass", { email, password })
  const { api_key } = await admin.client.fetch("/admin/api-keys", {
    method: "POST",
    body: { title: `Medusa SDK test ${run}` },
  })
  out.api_key = { id: api_key.id, prefix: api_key.token.slice(0, 3), redacted: api_key.redacted }

  const keyed = new Medusa({ baseUrl, apiKey: api_key.token })
  const before = sent.length
  Object.assign(out, await drive(keyed, "key"))
  const authorizations = new Set(sent.slice(before).map((request) => request.authorization))
  out.authorization_headers = authorizations.size
  const [header] = authorizations
  const [scheme, encoded] = header.split(" ")
  out.authorization_scheme = scheme
  out.authorization_is_token_colon = Buffer.from(encoded, "base64").toString() === `${api_key.token}:`

  await admin.client.fetch(`/admin/api-keys/${api_key.id}/revoke`, { method: "POST" })
  out.revoked_error = await failure(keyed.client.fetch("/admin/customers"))
  return out
}

const scenarios = { jwt, api_key: apiKey }
if (!scenarios[scenario]) throw new Error(`unknown scenario ${scenario}`)
process.stdout.write(`${JSON.stringify(await scenarios[scenario]())}\n`)
