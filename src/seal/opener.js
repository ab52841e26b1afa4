"use strict";
// Opens a sealgate envelope (docs/envelope-format.md) with WebCrypto only:
// PBKDF2-HMAC-SHA512 -> HMAC-SHA256 check over header and ciphertext ->
// AES-256-CTR. Nothing is decrypted before the MAC verifies.
(function () {
  const WRONG = document.documentElement.dataset.wrong;
  const $ = (id) => document.getElementById(id);
  const b64 = (s) => Uint8Array.from(atob(s.replace(/\s+/g, "")), (c) => c.charCodeAt(0));

  async function open(envelope, password) {
    const te = new TextEncoder();
    if (envelope.length < 74 || te.encode("SGEV").some((b, i) => envelope[i] !== b)) {
      throw new Error("format");
    }
    if (envelope[4] !== 1 || envelope[5] !== 1) throw new Error("format");
    const view = new DataView(envelope.buffer, envelope.byteOffset);
    const iterations = view.getUint32(6);
    if (iterations < 210000 || iterations > 10000000) throw new Error("format");
    const salt = envelope.slice(10, 26);
    const iv = envelope.slice(26, 42);
    const signed = envelope.slice(0, envelope.length - 32);
    const tag = envelope.slice(envelope.length - 32);
    const pw = password.replace(/[\s-]+/g, "").toLowerCase();
    const base = await crypto.subtle.importKey("raw", te.encode(pw), "PBKDF2", false, ["deriveBits"]);
    const bits = new Uint8Array(await crypto.subtle.deriveBits(
      { name: "PBKDF2", hash: "SHA-512", salt, iterations }, base, 512));
    const macKey = await crypto.subtle.importKey("raw", bits.slice(32), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
    if (!(await crypto.subtle.verify("HMAC", macKey, tag, signed))) throw new Error("auth");
    const aesKey = await crypto.subtle.importKey("raw", bits.slice(0, 32), "AES-CTR", false, ["decrypt"]);
    const plain = await crypto.subtle.decrypt({ name: "AES-CTR", counter: iv, length: 128 }, aesKey, signed.slice(42));
    return JSON.parse(new TextDecoder().decode(plain));
  }

  function show(content) {
    const headers = $("headers");
    for (const [name, value] of content.headers) {
      const row = headers.insertRow();
      const th = document.createElement("th");
      th.textContent = name;
      row.appendChild(th);
      row.insertCell().textContent = value;
    }
    if (content.text) {
      $("text").textContent = content.text;
      $("text").hidden = false;
    }
    if (content.html) {
      // Sandboxed without allow-scripts: the sender's HTML cannot run code,
      // and the page's CSP forbids every network request.
      $("html").srcdoc = content.html;
      $("html").hidden = false;
    }
    const list = $("attachments");
    for (const a of content.attachments) {
      const link = document.createElement("a");
      link.href = URL.createObjectURL(new Blob([b64(a.data)], { type: a.content_type }));
      link.download = a.name;
      link.textContent = a.name + " (" + a.content_type + ")";
      list.appendChild(document.createElement("li")).appendChild(link);
    }
    $("attachments-title").hidden = content.attachments.length === 0;
    $("original").href = URL.createObjectURL(new Blob([b64(content.original)], { type: "message/rfc822" }));
    $("unlock").hidden = true;
    $("message").hidden = false;
  }

  $("unlock").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("error").hidden = true;
    $("open").disabled = true;
    try {
      show(await open(b64($("envelope").textContent), $("password").value));
    } catch (e) {
      $("error").textContent = WRONG;
      $("error").hidden = false;
    } finally {
      $("open").disabled = false;
    }
  });
})();
