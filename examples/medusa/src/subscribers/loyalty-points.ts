/**
 * Loyalty points for Medusa v2 orders, kept in the Loyalty Points service.
 *
 * - order.placed: the customer earns points for the order's total (LOYALTY_POINTS_PER_UNIT
 *   per unit of currency), recorded with reference = the order id.
 * - order.canceled: whatever is left of those points is taken back (a reversal).
 * - payment.refunded: the points the refunded money earned are taken back, so that after any
 *   number of (partial) refunds the reversed total matches what was refunded in all.
 *
 * Each step can run again safely (Medusa re-runs a subscriber that failed): the order's
 * reference is unique per customer in the service, the writes carry Idempotency-Keys, and a
 * refund reverses only the difference between what should be reversed and what already is.
 * Network errors and 5xx answers are thrown, so the event is retried; a refusal (such as a
 * customer who already spent the points) is logged, as retrying would not change it.
 */
import type { SubscriberArgs, SubscriberConfig } from "@medusajs/framework"
import type { MedusaContainer } from "@medusajs/framework/types"
import { ContainerRegistrationKeys } from "@medusajs/framework/utils"

import { LoyaltyError, loyaltyFromEnv, type LoyaltyClient } from "../lib/loyalty-client"
import {
  asPoints,
  hundredthsFor,
  hundredthsToReverse,
  pointsPerUnit,
  toCents,
} from "../lib/loyalty-points"

function resolve(container: MedusaContainer) {
  return {
    query: container.resolve(ContainerRegistrationKeys.QUERY),
    logger: container.resolve(ContainerRegistrationKeys.LOGGER),
  }
}
type Query = ReturnType<typeof resolve>["query"]
type Logger = ReturnType<typeof resolve>["logger"]

type Order = {
  id: string
  customer_id: string | null
  email: string | null
  total: number | string
  currency_code: string
}
type Amount = { amount: number | string }
type OrderWithRefunds = Order & {
  payment_collections?: { payments?: { refunds?: Amount[] }[] }[]
}

const ORDER_FIELDS = ["id", "customer_id", "email", "total", "currency_code"]

export default async function loyaltyPointsHandler({
  event,
  container,
}: SubscriberArgs<{ id: string }>) {
  const { query, logger } = resolve(container)
  const loyalty = loyaltyFromEnv()
  const rate = pointsPerUnit(process.env.LOYALTY_POINTS_PER_UNIT)
  try {
    switch (event.name) {
      case "order.placed":
        return await award(query, loyalty, logger, event.data.id, rate)
      case "order.canceled":
        return await reverseAll(query, loyalty, logger, event.data.id)
      case "payment.refunded":
        return await reverseRefunded(query, loyalty, logger, event.data.id, rate)
    }
  } catch (error) {
    // A refusal is final: log it in the service's own words. Anything else is retried.
    if (error instanceof LoyaltyError && error.status < 500 && error.status !== 429) {
      logger.warn(`loyalty points for ${event.name} ${event.data.id}: ${error.message}`)
      return
    }
    throw error
  }
}

async function orderById(
  query: Query,
  id: string,
  fields: string[] = ORDER_FIELDS
): Promise<OrderWithRefunds | undefined> {
  const { data } = await query.graph({ entity: "order", fields, filters: { id } })
  return data[0] as OrderWithRefunds | undefined
}

async function award(
  query: Query,
  loyalty: LoyaltyClient,
  logger: Logger,
  orderId: string,
  rate: number
) {
  const order = await orderById(query, orderId)
  if (!order?.customer_id) {
    return // a guest order: nobody to award
  }
  const earned = hundredthsFor(toCents(order.total), rate)
  if (earned === 0) {
    return // the service refuses a zero delta ("delta must be a non-zero number")
  }
  const body = {
    customer_id: order.customer_id,
    delta: asPoints(earned),
    reason: `Order ${order.id}`,
    reference: order.id,
    metadata: { medusa_order_id: order.id, currency_code: order.currency_code },
  }
  const key = `medusa-order-placed-${order.id}`
  try {
    await loyalty.adjust(body, key)
  } catch (error) {
    if (error instanceof LoyaltyError && error.status === 404 && order.email) {
      // First order of this customer: the service mirrors Medusa's customer id.
      await createCustomer(loyalty, order.customer_id, order.email)
      await loyalty.adjust(body, key)
    } else if (error instanceof LoyaltyError && error.status === 409) {
      return // the reference is already used: this order's points were awarded before
    } else {
      throw error
    }
  }
  logger.info(`loyalty: ${body.delta} points for order ${order.id}`)
}

async function createCustomer(loyalty: LoyaltyClient, id: string, email: string) {
  try {
    await loyalty.createCustomer({ id, email })
  } catch (error) {
    // Created meanwhile by another event of the same customer: fine.
    if (!(error instanceof LoyaltyError && error.status === 409)) throw error
  }
}

/** The credit recorded for an order, if any. */
async function creditOf(loyalty: LoyaltyClient, order: Order) {
  const [credit] = await loyalty.adjustmentsByReference(order.id, order.customer_id ?? undefined)
  return credit
}

async function reverseAll(
  query: Query,
  loyalty: LoyaltyClient,
  logger: Logger,
  orderId: string
) {
  const order = await orderById(query, orderId)
  const credit = order?.customer_id ? await creditOf(loyalty, order) : undefined
  if (!order || !credit) {
    return
  }
  try {
    // No points: all that is not reversed yet (after partial refunds, the rest).
    await loyalty.reverse(credit.id, `medusa-order-canceled-${order.id}`, undefined, "Order canceled")
  } catch (error) {
    if (error instanceof LoyaltyError && error.status === 409) {
      return // already reversed in full
    }
    throw error
  }
  logger.info(`loyalty: points of order ${order.id} reversed (canceled)`)
}

async function reverseRefunded(
  query: Query,
  loyalty: LoyaltyClient,
  logger: Logger,
  paymentId: string,
  rate: number
) {
  // The refunded payment's collection is linked to its order (Medusa's
  // OrderPaymentCollection link); the refunds of all the order's payments count.
  const { data } = await query.graph({
    entity: "payment",
    fields: ["id", "payment_collection.order.id"],
    filters: { id: paymentId },
  })
  const orderId: string | undefined = (data[0] as any)?.payment_collection?.order?.id
  const order = orderId
    ? await orderById(query, orderId, [
        ...ORDER_FIELDS,
        "payment_collections.payments.refunds.amount",
      ])
    : undefined
  const credit = order?.customer_id ? await creditOf(loyalty, order) : undefined
  if (!order || !credit) {
    return
  }
  const refunds = (order.payment_collections ?? []).flatMap((collection) =>
    (collection.payments ?? []).flatMap((payment) => payment.refunds ?? [])
  )
  const refundedCents = refunds.reduce((sum, refund) => sum + toCents(refund.amount), 0)
  const earned = Math.round(credit.delta * 100)
  const target = hundredthsToReverse(refundedCents, earned, rate)
  const current = await loyalty.adjustment(credit.id)
  const done = Math.round((current.reversed_points ?? 0) * 100)
  if (target <= done) {
    return // this refund's points are already taken back (a re-run, or a cancel came first)
  }
  // The key names the target, so two runs for the same refunds make one reversal.
  await loyalty.reverse(
    credit.id,
    `medusa-order-refunded-${order.id}-${target}`,
    asPoints(target - done),
    "Order refunded"
  )
  logger.info(`loyalty: ${asPoints(target - done)} points of order ${order.id} reversed (refund)`)
}

export const config: SubscriberConfig = {
  event: ["order.placed", "order.canceled", "payment.refunded"],
  context: { subscriberId: "loyalty-points" },
}
