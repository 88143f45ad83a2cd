#!/usr/bin/env node
'use strict'
// Issue 12's multihop proof: STREAM senders attached to ilp-connector 21.3.0 pay a node
// pointer over SPSP4, through the connector, in one of the two modes of scenario 05:
//
//   sender (ilp-plugin-btp) --BTP--> [ilp-connector 21.3.0] --BTP--> node --> STREAM receiver
//
//   mode A (SUT_CONNECTOR_BTP_SERVER_PORT set): the connector listens there (account "sut",
//          child, secret SUT_CONNECTOR_BTP_SECRET); the node dials out to it as its parent.
//   mode B (otherwise): the connector dials SUT_BTP_URL; the node is its parent (IL-DCP).
//
// No default route: the packets are forwarded only once the node has advertised a CCP route
// covering the pointer's STREAM address. The sender's account has a maximum packet amount
// (STREAM_MULTIHOP_MAX_PACKET, 1000), so the senders learn it from the connector's F08 and
// split the payment. Then, each over the connector:
//   1. @interledger/pay 0.4.0-alpha.9: setupPayment, startQuote (STREAM_AMOUNT), pay;
//   2. ilp-protocol-stream 2.7.2-alpha.3: createConnection, sendTotal(STREAM_AMOUNT2), end.
// Prints one JSON line (lib/common's runScenario) whose metrics.payments lists
// {sender, destination, asked, delivered}: scripts/interop.sh checks the node's ledger
// against it (each connection recorded once, the amount delivered).
//
// Run from the harness directory (HARNESS_DIR, default the working directory): every module,
// lib/common.js included, is loaded from there.
const path = require('path')
const net = require('net')
const crypto = require('crypto')
const { createRequire } = require('module')

const hreq = createRequire(path.join(process.env.HARNESS_DIR || process.cwd(), 'package.json'))
const C = hreq('./lib/common')
const NAME = 'stream-multihop'
const HOST = '127.0.0.1'

function freePort () {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.listen(0, HOST, () => { const p = s.address().port; s.close(() => resolve(p)) })
    s.on('error', reject)
  })
}

async function spsp4 (url) {
  C.assertLoopbackUrl(url)
  const res = await fetch(url, { headers: { Accept: 'application/spsp4+json' } })
  const ct = res.headers.get('content-type') || ''
  if (res.status !== 200) throw new Error(`SPSP4 query: HTTP ${res.status}`)
  if (!ct.startsWith('application/spsp4+json')) throw new Error(`SPSP4 query answered ${ct}`)
  const body = await res.json()
  return { destinationAccount: body.destination_account, sharedSecret: Buffer.from(body.shared_secret, 'base64') }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const modeA = !!C.env('SUT_CONNECTOR_BTP_SERVER_PORT')
const needed = modeA ? ['SUT_STREAM_SPSP_URL'] : ['SUT_BTP_URL', 'SUT_STREAM_SPSP_URL']
if (C.requireEnv(NAME, needed)) {
  C.runScenario(NAME, async (ctx) => {
    const connectorRoot = path.dirname(hreq.resolve('ilp-connector/package.json'))
    const connectorLog = hreq('ilp-connector/src/common/log')
    connectorLog.setOutputStream(process.stderr)
    const reduct = hreq(require.resolve('reduct', { paths: [connectorRoot] }))
    const { createApp } = hreq('ilp-connector')
    const RoutingTable = hreq('ilp-connector/src/services/routing-table').default
    const Accounts = hreq('ilp-connector/src/services/accounts').default
    const RouteBroadcaster = hreq('ilp-connector/src/services/route-broadcaster').default
    const ILDCP = hreq('ilp-protocol-ildcp')
    const pay = hreq('@interledger/pay')
    const STREAM = hreq('ilp-protocol-stream')

    ctx.metrics.mode = modeA ? 'A sut-connects-out' : 'B connector-connects-in'
    const assetCode = C.env('MULTIHOP_ASSET_CODE', 'XRP')
    const assetScale = Number(C.env('MULTIHOP_ASSET_SCALE', '9'))
    const senderPort = await freePort()
    const senderSecret = crypto.randomBytes(16).toString('hex')
    const accounts = {
      sender: {
        relation: 'child',
        plugin: 'ilp-plugin-btp',
        assetCode,
        assetScale,
        // Smaller than the amounts: the connector's F08 makes both senders split the payment,
        // so several packets cross both hops and each must be recorded once.
        maxPacketAmount: C.env('STREAM_MULTIHOP_MAX_PACKET', '1000'),
        options: { listener: { port: senderPort, secret: senderSecret, wsOpts: { host: HOST, port: senderPort } } }
      }
    }
    if (modeA) {
      const port = Number(C.env('SUT_CONNECTOR_BTP_SERVER_PORT'))
      accounts.sut = {
        relation: 'child',
        plugin: 'ilp-plugin-btp',
        assetCode,
        assetScale,
        sendRoutes: true,
        receiveRoutes: true,
        options: { listener: { port, secret: C.env('SUT_CONNECTOR_BTP_SECRET', 'sutsecret'), wsOpts: { host: HOST, port } } }
      }
    } else {
      C.assertLoopbackUrl(C.env('SUT_BTP_URL'))
      accounts.sut = {
        relation: 'parent',
        plugin: 'ilp-plugin-btp',
        assetCode,
        assetScale,
        sendRoutes: false,
        receiveRoutes: true,
        options: { server: C.env('SUT_BTP_URL') }
      }
    }
    const deps = reduct()
    const connector = createApp({
      env: 'test',
      ilpAddress: modeA ? C.env('MULTIHOP_CONNECTOR_ADDRESS', 'test.harness') : 'unknown',
      ilpAddressInheritFrom: modeA ? '' : 'sut',
      backend: 'one-to-one',
      spread: 0,
      store: 'ilp-store-memory',
      defaultRoute: '',
      initialConnectTimeout: 3000,
      accounts
    }, deps)
    const routingTable = deps(RoutingTable)
    const connAccounts = deps(Accounts)
    const routeBroadcaster = deps(RouteBroadcaster)
    const plugins = []
    const senderPlugin = () => {
      const p = C.makeBtpPlugin(`btp+ws://sender:${senderSecret}@${HOST}:${senderPort}`)
      plugins.push(p)
      return p
    }
    try {
      const t0 = C.nowMs()
      await connector.listen()
      const own = connAccounts.getOwnAddress()
      ctx.metrics.connector_address = own
      if (own === 'unknown') return { ok: false, detail: 'the connector got no ILP address from the node (IL-DCP)' }
      const sutPlugin = connector.getPlugin('sut')
      const connectWait = Number(C.env('MULTIHOP_CONNECT_WAIT_S', '30')) * 1000
      while (!sutPlugin.isConnected() && C.nowMs() - t0 < connectWait) await sleep(100)
      if (!sutPlugin.isConnected()) return { ok: false, detail: 'the node and the connector did not connect' }

      // Wait for the node's CCP route to its receivers (re-sending route control as 05 does).
      const url = C.env('SUT_STREAM_SPSP_URL')
      const probeDestination = (await spsp4(url)).destinationAccount
      const ccpWait = Number(C.env('MULTIHOP_CCP_WAIT_S', '20')) * 1000
      const tr = C.nowMs()
      let lastNudge = C.nowMs()
      let route
      while (C.nowMs() - tr < ccpWait) {
        const prefix = routingTable.resolvePrefix(probeDestination)
        route = prefix !== undefined && routingTable.get(prefix)
        if (route && route.nextHop === 'sut') { route.prefix = prefix; break }
        if (C.nowMs() - lastNudge > 3000) {
          lastNudge = C.nowMs()
          const peer = routeBroadcaster.peers.get('sut')
          const receiver = peer && peer.getReceiver()
          if (receiver) receiver.sendRouteControl()
        }
        await sleep(100)
      }
      if (!route || route.nextHop !== 'sut') return { ok: false, detail: `no CCP route for ${probeDestination} via the node after ${ccpWait / 1000} s` }
      ctx.metrics.route_prefix = route.prefix

      const payments = []
      const fail = []
      // 1. @interledger/pay: asset probe, rate probe, payment, close.
      const amount = C.env('STREAM_AMOUNT', '5000')
      const p1 = senderPlugin()
      await C.withTimeout(p1.connect(), 10000, 'sender BTP connect')
      const me = await C.withTimeout(ILDCP.fetch(p1.sendData.bind(p1)), 10000, 'sender IL-DCP')
      ctx.metrics.sender_address = me.clientAddress
      try {
        const creds = await spsp4(url)
        const destination = await C.withTimeout(pay.setupPayment({ plugin: p1, destinationAddress: creds.destinationAccount, sharedSecret: creds.sharedSecret }), 15000, '@interledger/pay setupPayment')
        const quote = await C.withTimeout(pay.startQuote({ plugin: p1, destination, amountToSend: amount, sourceAsset: { code: me.assetCode, scale: me.assetScale } }), 20000, '@interledger/pay startQuote')
        const r = await C.withTimeout(pay.pay({ plugin: p1, destination, quote }), 30000, '@interledger/pay pay')
        payments.push({ sender: '@interledger/pay', destination: creds.destinationAccount, asked: amount, delivered: String(r.amountDelivered) })
        if (r.error || String(r.amountDelivered) !== amount) fail.push(`@interledger/pay delivered ${r.amountDelivered} of ${amount}${r.error ? ' error ' + r.error : ''}`)
        await pay.closeConnection(p1, destination).catch(() => {})
      } catch (e) { fail.push('@interledger/pay: ' + (e && e.message ? e.message : String(e))) }
      await p1.disconnect().catch(() => {})
      // 2. ilp-protocol-stream: sendTotal on one stream, then a clean close.
      const amount2 = C.env('STREAM_AMOUNT2', '3000')
      const p2 = senderPlugin()
      await C.withTimeout(p2.connect(), 10000, 'sender BTP connect')
      try {
        const creds = await spsp4(url)
        const conn = await C.withTimeout(STREAM.createConnection({ plugin: p2, destinationAccount: creds.destinationAccount, sharedSecret: creds.sharedSecret }), 15000, 'STREAM connect')
        const stream = conn.createStream()
        await C.withTimeout(stream.sendTotal(amount2), 30000, 'STREAM sendTotal')
        payments.push({ sender: 'ilp-protocol-stream', destination: creds.destinationAccount, asked: amount2, delivered: String(conn.totalDelivered) })
        if (String(conn.totalDelivered) !== amount2) fail.push(`ilp-protocol-stream delivered ${conn.totalDelivered} of ${amount2}`)
        await C.withTimeout(conn.end(), 10000, 'STREAM close')
      } catch (e) { fail.push('ilp-protocol-stream: ' + (e && e.message ? e.message : String(e))) }
      await p2.disconnect().catch(() => {})
      ctx.metrics.payments = payments
      const done = payments.map((p) => `${p.sender} ${p.delivered}/${p.asked}`).join(', ')
      const how = modeA ? 'A (node connects out)' : 'B (connector connects in)'
      return { ok: fail.length === 0, detail: fail.length ? fail.join('; ') : `mode ${how}: ${me.clientAddress} -> ${own} -> node over route ${route.prefix}: ${done}` }
    } finally {
      for (const p of plugins) await p.disconnect().catch(() => {})
      await connector.shutdown().catch(() => {})
    }
  }, { timeoutMs: Number(C.env('SCENARIO_TIMEOUT_S', '120')) * 1000 })
}
