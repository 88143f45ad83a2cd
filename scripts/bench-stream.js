#!/usr/bin/env node
'use strict'
// STREAM load (issue 12): STREAM_LOAD_N whole STREAM payments, STREAM_LOAD_C at a time, all
// over ONE BTP connection (SUT_BTP_URL) to the receiver behind SUT_STREAM_SPSP_URL. Run
// against the node (a pointer) and against the JS reference stand-in (its STREAM receiver
// carol, ilp-protocol-stream createServer behind ilp-connector 21.3.0) in the same run by
// scripts/interop.sh's STREAM load block (`make bench`).
//
// One payment = what an ilp-protocol-stream 2.7.2-alpha.3 client does for a fresh SPSP4
// answer: createConnection (its test volley of unfulfillable packets proves the exchange
// rate), stream.sendTotal(STREAM_LOAD_AMOUNT) (fulfillable money packets), conn.end()
// (StreamClose, ConnectionClose). The SPSP4 answers are fetched before the clock starts (each
// payment needs its own: one connection per destination), so the figure is the STREAM path
// over BTP, not HTTP. The connections share the one BTP plugin through a thin wrapper
// (createConnection would otherwise take the plugin's data handler and disconnect it on
// close); its IL-DCP is answered from one real IL-DCP exchange made up front.
//
// Prints one JSON line (lib/common's runScenario, scenario "stream-load"): payments/s,
// packets/s, packets per payment, latency per payment. Pass = every payment delivered its
// whole amount, no error. Run from the harness directory (HARNESS_DIR) for its node_modules.
const path = require('path')
const { createRequire } = require('module')

const hreq = createRequire(path.join(process.env.HARNESS_DIR || process.cwd(), 'package.json'))
const C = hreq('./lib/common')
const NAME = 'stream-load'

const N = Number(C.env('STREAM_LOAD_N', '1000'))
const CONC = Number(C.env('STREAM_LOAD_C', '20'))
const AMOUNT = C.env('STREAM_LOAD_AMOUNT', '1000')
const WARMUP = Number(C.env('STREAM_LOAD_WARMUP', '20'))
const DURATION_S = Number(C.env('STREAM_LOAD_DURATION_S', '180'))

async function spsp4 (url) {
  const res = await fetch(url, { headers: { Accept: 'application/spsp4+json' } })
  if (res.status !== 200) throw new Error(`SPSP4 query: HTTP ${res.status}`)
  const body = await res.json()
  return { destinationAccount: body.destination_account, sharedSecret: Buffer.from(body.shared_secret, 'base64') }
}

async function credentials (url, count) {
  C.assertLoopbackUrl(url)
  const out = []
  let next = 0
  const worker = async () => { while (next < count) { next++; out.push(await spsp4(url)) } }
  await Promise.all(Array.from({ length: 10 }, worker))
  return out
}

// A plugin for one STREAM connection that sends over the shared BTP plugin.
function sharedLink (plugin, ildcpReply, counts) {
  let first = true
  return {
    connect: async () => {},
    disconnect: async () => {},
    isConnected: () => true,
    registerDataHandler: () => {},
    deregisterDataHandler: () => {},
    registerMoneyHandler: () => {},
    deregisterMoneyHandler: () => {},
    sendMoney: async () => {},
    sendData: async (data) => {
      if (first) { first = false; return ildcpReply } // createConnection's IL-DCP comes first
      counts.packets++
      const reply = await plugin.sendData(data)
      if (reply[0] === 13) {
        counts.fulfills++
      } else {
        counts.rejects++
        const code = C.parseIlp(reply).code
        counts.reject_codes[code] = (counts.reject_codes[code] || 0) + 1
      }
      return reply
    }
  }
}

if (C.requireEnv(NAME, ['SUT_BTP_URL', 'SUT_STREAM_SPSP_URL'])) {
  C.runScenario(NAME, async (ctx) => {
    const STREAM = hreq('ilp-protocol-stream')
    const ILDCP = hreq('ilp-protocol-ildcp')
    const url = C.env('SUT_STREAM_SPSP_URL')
    const creds = await credentials(url, N + WARMUP)
    process.stderr.write(`stream-load: ${creds.length} SPSP4 answers fetched, paying\n`)
    const plugin = C.makeBtpPlugin(C.env('SUT_BTP_URL'))
    await C.withTimeout(plugin.connect(), 10000, 'BTP connect')
    plugin.registerDataHandler(async () => C.rawReject('F02', '', 'no receiver'))
    const ildcpReply = await plugin.sendData(ILDCP.serializeIldcpRequest({}))
    const counts = { packets: 0, fulfills: 0, rejects: 0, reject_codes: {} }
    const payOnce = async (cred) => {
      const conn = await STREAM.createConnection({ plugin: sharedLink(plugin, ildcpReply, counts), destinationAccount: cred.destinationAccount, sharedSecret: cred.sharedSecret })
      const stream = conn.createStream()
      await stream.sendTotal(AMOUNT)
      const delivered = String(conn.totalDelivered)
      await conn.end()
      if (delivered !== AMOUNT) throw new Error(`delivered ${delivered} of ${AMOUNT}`)
    }
    let warmed = 0
    for (let i = 0; i < WARMUP; i++) await payOnce(creds.pop()).then(() => { warmed++ }, () => {})
    ctx.metrics.warmup_delivered = warmed
    Object.assign(counts, { packets: 0, fulfills: 0, rejects: 0, reject_codes: {} })

    const lat = []
    const errors = {}
    let started = 0
    let done = 0
    let failed = 0
    const t0 = C.nowMs()
    const deadline = Date.now() + DURATION_S * 1000
    const snapshot = () => {
      const elapsedS = (C.nowMs() - t0) / 1000
      return {
        n: N,
        concurrency: CONC,
        amount: AMOUNT,
        delivered: done,
        failed,
        elapsed_s: Math.round(elapsedS * 1000) / 1000,
        payments_per_sec: Math.round((done / elapsedS) * 10) / 10,
        packets_per_sec: Math.round((counts.packets / elapsedS) * 10) / 10,
        packets_per_payment: done ? Math.round((counts.packets / done) * 100) / 100 : null,
        packets: JSON.parse(JSON.stringify(counts)),
        latency: C.latencySummary(lat),
        errors
      }
    }
    const ticker = setInterval(() => { Object.assign(ctx.metrics, snapshot()) }, 1000)
    const worker = async () => {
      while (started < N && Date.now() < deadline) {
        const cred = creds[started++]
        const s = C.nowMs()
        try {
          await payOnce(cred)
          done++
          lat.push(C.nowMs() - s)
        } catch (e) {
          failed++
          const key = String(e && e.message).slice(0, 120)
          errors[key] = (errors[key] || 0) + 1
        }
      }
    }
    await Promise.all(Array.from({ length: CONC }, worker))
    clearInterval(ticker)
    const snap = snapshot()
    Object.assign(ctx.metrics, snap)
    await plugin.disconnect().catch(() => {})
    const ok = done === N && failed === 0
    const detail = `${done}/${N} STREAM payments delivered, ${failed} failed, c=${CONC}, ${snap.payments_per_sec} payments/s (${snap.packets_per_sec} packets/s, ${snap.packets_per_payment} per payment), p50 ${snap.latency.p50_ms} ms, p99 ${snap.latency.p99_ms} ms`
    return { ok, detail }
  }, { timeoutMs: (DURATION_S + 120) * 1000 })
}
