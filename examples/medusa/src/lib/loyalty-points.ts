/**
 * How many points an order earns, and how many a refund takes back. Pure: no I/O.
 *
 * The Loyalty Points service keeps points exactly, in hundredths, and refuses a delta with
 * more than 2 decimal places (JavaScript's 0.1 + 0.2 is 0.30000000000000004, which it
 * refuses with a message saying so). So every amount here is worked out in whole hundredths
 * (integers, exact in a double up to 2^53) and only divided by 100 at the very end: an
 * integer divided by 100 always prints with at most 2 decimals in JSON.
 */

/** Points per unit of the order's currency (1 = one point per dollar), from the env. */
export function pointsPerUnit(raw: string | undefined): number {
  const rate = raw === undefined || raw === "" ? 1 : Number(raw)
  if (!Number.isFinite(rate) || rate <= 0) {
    throw new Error(`LOYALTY_POINTS_PER_UNIT must be a number above 0, not ${raw}`)
  }
  return rate
}

/** An amount of money (Medusa v2 gives totals in the currency's main unit: 49.99) in whole
 * cents, rounded to the nearest cent (the total's own float error is far below one). */
export function toCents(amount: number | string): number {
  const value = Number(amount)
  if (!Number.isFinite(value) || value < 0) {
    throw new Error(`an amount must be a finite number of at least 0, not ${amount}`)
  }
  return Math.round(value * 100)
}

/** Hundredths of a point earned by `cents` of spending, rounded down (never over-award).
 * The epsilon keeps a product like 100 * 0.29 (28.999999999999996 in a double) from
 * losing a hundredth; it is far below one, so it never adds one. */
export function hundredthsFor(cents: number, rate: number): number {
  return Math.floor(cents * rate + 1e-9)
}

/** Hundredths of a point as the JSON number the service takes: 4999 → 49.99. */
export function asPoints(hundredths: number): number {
  return hundredths / 100
}

/** Hundredths to take back for a refund so far: what the refunded money earned, never more
 * than what the order earned. */
export function hundredthsToReverse(
  refundedCents: number,
  earnedHundredths: number,
  rate: number
): number {
  return Math.min(hundredthsFor(refundedCents, rate), earnedHundredths)
}
