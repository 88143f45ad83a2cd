#!/usr/bin/env node
'use strict'
// One sender of `make bench-cluster` (scripts/bench_cluster.py): the interop harness's `load`
// scenario (08-load.js: ilp-protocol-psk2 0.2.1 sendSingleChunk over ONE BTP connection, LOAD_C
// in flight, to one SPSP-issued destination), plus what an aggregate over several senders
// needs: every fulfilled payment's latency written to LOAD_LAT_FILE (ms, one per line), and the
// load's start and end as epoch milliseconds (a common clock across processes). The bench
// starts one of these per BTP link (one process per link, as one sender per Daphne would).
// LOAD_START_AT (epoch ms): after the warm-up, wait until then, so the senders start together.
// Prints one JSON line (lib/common's runScenario, scenario "cluster-load").
// Run from the harness directory (HARNESS_DIR) for its node_modules.
const fs = require('fs')
const path = require('path')
const { createRequire } = require('module')

const hreq = createRequire(path.join(process.env.HARNESS_DIR || process.cwd(), 'package.json'))
const C = hreq('./lib/common')
const PSK2 = hreq('ilp-protocol-psk2')
const NAME = 'cluster-load'

const N = Number(C.env('LOAD_N', '2000'))
const CONC = Number(C.env('LOAD_C', '50'))
const DURATION_S = Number(C.env('LOAD_DURATION_S', '600'))
const AMOUNT = C.env('LOAD_AMOUNT', '10')
const WARMUP = Number(C.env('LOAD_WARMUP', '20'))
const START_AT = Number(C.env('LOAD_START_AT', '0'))
const LAT_FILE = C.env('LOAD_LAT_FILE', '')

if (C.requireEnv(NAME, ['SUT_BTP_URL', 'SUT_SPSP_URL'])) {
  C.runScenario(NAME, async (ctx) => {
    const spsp = await C.spspQuery(C.env('SUT_SPSP_URL'))
    const plugin = C.makeBtpPlugin(C.env('SUT_BTP_URL'))
    await C.withTimeout(plugin.connect(), 10000, 'BTP connect')
    plugin.registerDataHandler(async () => C.rawReject('F02', '', 'no receiver'))
    const params = { destinationAccount: spsp.destinationAccount, sharedSecret: spsp.sharedSecret, sourceAmount: AMOUNT }
    let warm = 0
    for (let i = 0; i < WARMUP; i++) {
      const r = await PSK2.sendSingleChunk(plugin, params).catch(() => null)
      if (r && r.destinationAmount === String(AMOUNT)) warm++
    }
    const wait = START_AT - Date.now()
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))

    const lat = []
    const errors = {}
    let started = 0
    let fulfilled = 0
    let failed = 0
    const t0Epoch = Date.now()
    const t0 = C.nowMs()
    const deadline = Date.now() + DURATION_S * 1000
    const worker = async () => {
      while (started < N && Date.now() < deadline) {
        started++
        const s = C.nowMs()
        try {
          const r = await PSK2.sendSingleChunk(plugin, params)
          if (r.destinationAmount !== String(AMOUNT)) {
            failed++
            errors['amount ' + r.destinationAmount] = (errors['amount ' + r.destinationAmount] || 0) + 1
          } else {
            fulfilled++
            lat.push(C.nowMs() - s)
          }
        } catch (e) {
          failed++
          const key = String(e.message).slice(0, 120)
          errors[key] = (errors[key] || 0) + 1
        }
      }
    }
    await Promise.all(Array.from({ length: CONC }, worker))
    const elapsedS = (C.nowMs() - t0) / 1000
    const t1Epoch = Date.now()
    if (LAT_FILE) fs.writeFileSync(LAT_FILE, lat.map((x) => x.toFixed(3)).join('\n') + '\n')
    plugin.disconnect().catch(() => {})
    Object.assign(ctx.metrics, {
      n: N,
      concurrency: CONC,
      warmup_fulfilled: warm,
      started,
      fulfilled,
      failed,
      elapsed_s: Math.round(elapsedS * 1000) / 1000,
      t0_epoch_ms: t0Epoch,
      t1_epoch_ms: t1Epoch,
      payments_per_sec: Math.round((fulfilled / elapsedS) * 10) / 10,
      latency: C.latencySummary(lat),
      errors
    })
    const ok = fulfilled === N && failed === 0
    return { ok, detail: `${fulfilled}/${N} fulfilled, ${failed} failed, c=${CONC}` }
  }, { timeoutMs: (DURATION_S + 60) * 1000 })
}
