// The node half of `python -m ilp.bench`: the same packets, through the npm reference
// codecs (ilp-packet 3.1.3, btp-packet 2.2.1, ilp-protocol-stream 2.7.2-alpha.3), timed the
// same way.
//
// Input (stdin, JSON): {"seconds": s, "windows": n, "prepare": {...}, "fulfill": {...}, "reject": {...},
//   "requestId": n, "btp": bool, "stream": {"secret": hex, "source": address}}, binary fields as
//   hex, amounts as decimal strings.
// Output (stdout, JSON): {"versions": {...}, "opsPerSecond": {op: n}, "encoded": {op: hex}}.
// The packages are found through NODE_PATH (the bench installs them in .bench/).
'use strict'

const IlpPacket = require('ilp-packet')
const ilpPacketVersion = require('ilp-packet/package.json').version

function readStdin () {
  return new Promise((resolve, reject) => {
    const chunks = []
    process.stdin.on('data', (c) => chunks.push(c))
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    process.stdin.on('error', reject)
  })
}

let sink = null // every result is stored here so that no call can be optimised away

// CPU seconds of this process (user + system), like Python's time.process_time().
function cpuSeconds () {
  const usage = process.cpuUsage()
  return (usage.user + usage.system) / 1e6
}

// Same method as the Python side: a warm-up, then `windows` windows of `seconds / windows`
// of CPU time each (batches of 1000, the last one whole); the best window's rate counts.
function opsPerSecond (fn, seconds, windows) {
  const warmUntil = cpuSeconds() + seconds * 0.2
  while (cpuSeconds() < warmUntil) {
    for (let i = 0; i < 1000; i++) sink = fn()
  }
  const window = seconds / windows
  let best = 0
  for (let w = 0; w < windows; w++) {
    const start = cpuSeconds()
    let count = 0
    for (;;) {
      for (let i = 0; i < 1000; i++) sink = fn()
      count += 1000
      const elapsed = cpuSeconds() - start
      if (elapsed >= window) {
        best = Math.max(best, count / elapsed)
        break
      }
    }
  }
  return best
}

async function main () {
  const input = JSON.parse(await readStdin())
  const hex = (h) => Buffer.from(h, 'hex')
  const prepare = {
    amount: input.prepare.amount,
    expiresAt: new Date(input.prepare.expiresAt),
    executionCondition: hex(input.prepare.executionCondition),
    destination: input.prepare.destination,
    data: hex(input.prepare.data)
  }
  const fulfill = { fulfillment: hex(input.fulfill.fulfillment), data: hex(input.fulfill.data) }
  const reject = {
    code: input.reject.code,
    triggeredBy: input.reject.triggeredBy,
    message: input.reject.message,
    data: hex(input.reject.data)
  }
  const prepareBytes = IlpPacket.serializeIlpPrepare(prepare)
  const fulfillBytes = IlpPacket.serializeIlpFulfill(fulfill)
  const rejectBytes = IlpPacket.serializeIlpReject(reject)

  const ops = {
    'prepare encode': () => IlpPacket.serializeIlpPrepare(prepare),
    'prepare decode': () => IlpPacket.deserializeIlpPrepare(prepareBytes),
    'fulfill encode': () => IlpPacket.serializeIlpFulfill(fulfill),
    'fulfill decode': () => IlpPacket.deserializeIlpFulfill(fulfillBytes),
    'reject encode': () => IlpPacket.serializeIlpReject(reject),
    'reject decode': () => IlpPacket.deserializeIlpReject(rejectBytes)
  }
  const versions = { node: process.versions.node, 'ilp-packet': ilpPacketVersion }

  if (input.btp) {
    const Btp = require('btp-packet')
    versions['btp-packet'] = require('btp-packet/package.json').version
    const ilpEntry = (data) => [{ protocolName: 'ilp', contentType: Btp.MIME_APPLICATION_OCTET_STREAM, data }]
    const message = { type: Btp.TYPE_MESSAGE, requestId: input.requestId, data: { protocolData: ilpEntry(prepareBytes) } }
    const response = { type: Btp.TYPE_RESPONSE, requestId: input.requestId, data: { protocolData: ilpEntry(fulfillBytes) } }
    const messageBytes = Btp.serialize(message)
    const responseBytes = Btp.serialize(response)
    ops['btp message encode'] = () => Btp.serialize(message)
    ops['btp message decode'] = () => Btp.deserialize(messageBytes)
    ops['btp response encode'] = () => Btp.serialize(response)
    ops['btp response decode'] = () => Btp.deserialize(responseBytes)
  }

  if (input.stream) {
    // ilp-protocol-stream 2.7.2-alpha.3's packet codec. Its encrypt/decrypt are async
    // (Promise.resolve around the synchronous work): timed here is the synchronous body of
    // its util/crypto-node encrypt/decrypt, so the promise is not counted against it.
    const crypto = require('crypto')
    const S = require('ilp-protocol-stream/dist/src/packet')
    const Long = require('long')
    versions['ilp-protocol-stream'] = require('ilp-protocol-stream/package.json').version
    const key = crypto.createHmac('sha256', hex(input.stream.secret)).update(Buffer.from('ilp_stream_encryption')).digest()
    const prepare = new S.Packet(7, 12, 1000, [
      new S.ConnectionNewAddressFrame(input.stream.source),
      new S.ConnectionAssetDetailsFrame('XRP', 9),
      new S.StreamMoneyFrame(1, 1)
    ])
    const reply = new S.Packet(7, 13, 1000, [new S.StreamMaxMoneyFrame(1, Long.MAX_UNSIGNED_VALUE, 5000)])
    const prepareBytes = prepare._serialize()
    const replyBytes = reply._serialize()
    const encryptSync = (...buffers) => {
      const iv = crypto.randomBytes(12)
      const cipher = crypto.createCipheriv('aes-256-gcm', key, iv)
      const ciphertext = []
      for (const buffer of buffers) ciphertext.push(cipher.update(buffer))
      ciphertext.push(cipher.final())
      const tag = cipher.getAuthTag()
      ciphertext.unshift(iv, tag)
      return Buffer.concat(ciphertext)
    }
    const decryptSync = (data) => {
      const decipher = crypto.createDecipheriv('aes-256-gcm', key, data.slice(0, 12))
      decipher.setAuthTag(data.slice(12, 28))
      return Buffer.concat([decipher.update(data.slice(28)), decipher.final()])
    }
    const sealed = encryptSync(prepareBytes)
    ops['stream prepare encode'] = () => prepare._serialize()
    ops['stream prepare decode'] = () => S.Packet._deserializeUnencrypted(prepareBytes)
    ops['stream reply encode'] = () => reply._serialize()
    ops['stream reply decode'] = () => S.Packet._deserializeUnencrypted(replyBytes)
    ops['stream encrypt'] = () => encryptSync(prepare._serialize())
    ops['stream decrypt'] = () => S.Packet._deserializeUnencrypted(decryptSync(sealed))
  }

  const opsPerSecondByName = {}
  const encoded = {}
  for (const [name, fn] of Object.entries(ops)) {
    if (name.endsWith(' encode')) encoded[name] = Buffer.from(fn()).toString('hex')
    opsPerSecondByName[name] = opsPerSecond(fn, input.seconds, input.windows || 1)
  }
  process.stdout.write(JSON.stringify({ versions, opsPerSecond: opsPerSecondByName, encoded, sink: sink !== null }))
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + '\n')
  process.exit(1)
})
