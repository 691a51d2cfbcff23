/*!
 * Customer chat widget — embeddable, dependency-free.
 *
 * Embed with one tag:
 *   <script src="https://chat.example.com/static/chat/widget.js" data-title="Northwind Goods"
 *           data-color="#2563eb" data-greeting="Hi! How can I help?" async></script>
 *
 * Optional attributes: data-title, data-color, data-greeting, data-server (ws://, wss://,
 * http:// or https:// base URL of the chat server; default: the origin of this script) and
 * data-open="true" (open the panel on load).
 *
 * Host pages may call window.ChatWidget.open(), .close() and .send(text).
 */
(function () {
  "use strict";

  const HOST_ID = "nw-chat-widget";

  // Loaded twice (two tags, or a tag plus a tag manager): the first copy wins.
  if (window.ChatWidget || document.getElementById(HOST_ID)) return;

  // -------------------------------------------------------------------------------------------
  // Constants
  // -------------------------------------------------------------------------------------------

  const KEYS = {
    visitor: "nwchat.visitor",
    conversation: "nwchat.conversation",
    pending: "nwchat.pending",
  };
  const MAX_CHARS = 2000; // until the server's history frame says its own limit
  const MAX_PENDING = 50;
  const MAX_QUICK_REPLIES = 8;
  const PING_MS = 25000;
  const BACKOFF_BASE_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const TYPING_TIMEOUT_MS = 60000; // never leave the dots running if a reply is lost
  const TYPING_EVERY_MS = 2000; // while the customer writes to a person: "typing" at most this often
  const AGENT_TYPING_MS = 6000; // how long a person of the team shows as writing after saying so
  const CSS_TIMEOUT_MS = 4000;
  const CLOSE_UNKNOWN_CONVERSATION = 4404;
  const ROLES = ["customer", "bot", "agent", "system"];
  const DEFAULT_COLOR = "#2563eb";

  const TEXT = {
    title: "Customer support",
    greeting: "Hi! How can I help you today?",
    open: "Open chat",
    close: "Close chat",
    typing: "Assistant is typing",
    agentTyping: "Support team is typing",
    inputLabel: "Type your message",
    placeholder: "Type your message…",
    send: "Send",
    agentLabel: "Support team",
    quickReplies: "Suggested replies",
    conversation: "Conversation",
    handoff: "Connecting you to a member of our team…",
    waiting: "A member of our team will reply here.",
    rateQuestion: "How did we do?",
    rateScore: (score) => `${score} out of 5`,
    rated: "Thank you for your feedback.",
    helpful: "Helpful",
    notHelpful: "Not helpful",
    helpfulQuestion: "Did this answer help?",
    tooLong: (over, max) => `${over} characters too long (the limit is ${max}).`,
    charsLeft: (left) => `${left} characters left`,
    ended: "This conversation has ended. Send a message to start a new one.",
    error: "Something went wrong. Please try again.",
    sending: "Sending…",
    failed: "Not sent.",
    unanswered: "Not answered.",
    retry: "Retry",
    state: {
      connecting: "Connecting…",
      online: "Online",
      offline: "Offline — reconnecting…",
    },
  };

  // -------------------------------------------------------------------------------------------
  // Configuration from the <script> tag
  // -------------------------------------------------------------------------------------------

  const script = document.currentScript || document.querySelector('script[src*="widget.js"]');

  function dataAttr(name) {
    const value = script ? script.getAttribute("data-" + name) : null;
    return value === null ? "" : value.trim();
  }

  function parseUrl(value) {
    if (!value) return null;
    try {
      return new URL(value, window.location.href);
    } catch (e) {
      return null;
    }
  }

  /** ws(s)://host[/path] without a trailing slash, from a ws/wss/http/https URL; or null. */
  function toSocketBase(url, keepPath) {
    if (!url) return null;
    const schemes = { "http:": "ws:", "https:": "wss:", "ws:": "ws:", "wss:": "wss:" };
    const scheme = schemes[url.protocol];
    if (!scheme || !url.host) return null;
    return (scheme + "//" + url.host + (keepPath ? url.pathname : "")).replace(/\/+$/, "");
  }

  function pickColor(value) {
    const ok = value && window.CSS && CSS.supports && CSS.supports("color", value);
    return ok ? value : DEFAULT_COLOR;
  }

  function stylesheetUrl(scriptUrl) {
    if (!scriptUrl) return "/static/chat/widget.css";
    const url = new URL("widget.css", scriptUrl);
    url.search = scriptUrl.search; // keep a cache-busting ?v=… in step with the script
    return url.href;
  }

  function readConfig() {
    const scriptUrl = parseUrl(script && script.src);
    const pageUrl = parseUrl(window.location.href);
    return {
      title: dataAttr("title") || TEXT.title,
      color: pickColor(dataAttr("color")),
      greeting: dataAttr("greeting") || TEXT.greeting,
      server:
        toSocketBase(parseUrl(dataAttr("server")), true) ||
        toSocketBase(scriptUrl, false) ||
        toSocketBase(pageUrl, false),
      css: stylesheetUrl(scriptUrl),
      openOnLoad: dataAttr("open").toLowerCase() === "true",
    };
  }

  const config = readConfig();

  // -------------------------------------------------------------------------------------------
  // Storage (localStorage can throw: blocked cookies, Safari private mode, sandboxed frames)
  // -------------------------------------------------------------------------------------------

  const memoryStore = {};

  const store = {
    get(key) {
      try {
        const value = window.localStorage.getItem(key);
        if (value !== null) return value;
      } catch (e) {
        /* fall through to memory */
      }
      return Object.prototype.hasOwnProperty.call(memoryStore, key) ? memoryStore[key] : null;
    },
    set(key, value) {
      memoryStore[key] = value;
      try {
        window.localStorage.setItem(key, value);
      } catch (e) {
        /* memory only */
      }
    },
    remove(key) {
      delete memoryStore[key];
      try {
        window.localStorage.removeItem(key);
      } catch (e) {
        /* memory only */
      }
    },
  };

  function newId() {
    const cryptoObj = window.crypto;
    // randomUUID only exists in secure contexts (https, localhost).
    if (cryptoObj && typeof cryptoObj.randomUUID === "function") {
      try {
        return cryptoObj.randomUUID();
      } catch (e) {
        /* fall back below */
      }
    }
    const bytes = new Uint8Array(16);
    if (cryptoObj && typeof cryptoObj.getRandomValues === "function") {
      cryptoObj.getRandomValues(bytes);
    } else {
      for (let i = 0; i < bytes.length; i += 1) bytes[i] = Math.floor(Math.random() * 256);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // RFC 4122 version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20), hex.slice(20)].join("-");
  }

  function visitorId() {
    let id = store.get(KEYS.visitor);
    if (!id) {
      id = newId();
      store.set(KEYS.visitor, id);
    }
    return id;
  }

  function forgetConversation() {
    store.remove(KEYS.conversation);
  }

  // Pending (not yet acknowledged) customer messages: [{id, text, created}].
  // Always read-modify-write so two open tabs do not overwrite each other's queue.
  function readPending() {
    try {
      const list = JSON.parse(store.get(KEYS.pending) || "[]");
      return Array.isArray(list)
        ? list.filter((p) => p && typeof p.id === "string" && typeof p.text === "string")
        : [];
    } catch (e) {
      return [];
    }
  }

  function writePending(list) {
    if (list.length) store.set(KEYS.pending, JSON.stringify(list.slice(-MAX_PENDING)));
    else store.remove(KEYS.pending);
  }

  function addPending(entry) {
    const list = readPending().filter((p) => p.id !== entry.id);
    list.push(entry);
    writePending(list);
  }

  function removePending(ids) {
    const drop = new Set(ids);
    const list = readPending();
    const kept = list.filter((p) => !drop.has(p.id));
    if (kept.length !== list.length) writePending(kept);
  }

  // -------------------------------------------------------------------------------------------
  // DOM helpers (message text only ever goes through textContent / createTextNode)
  // -------------------------------------------------------------------------------------------

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.keys(attrs || {}).forEach((name) => {
      const value = attrs[name];
      if (value === null || value === undefined || value === false) return;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    });
    (children || []).forEach((child) => {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  // Icons are built with DOM calls, not markup strings, so Trusted Types pages accept them.
  function icon(name, paths) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("class", "icon icon--" + name);
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    paths.forEach((d) => {
      const path = document.createElementNS(ns, "path");
      path.setAttribute("d", d);
      svg.appendChild(path);
    });
    return svg;
  }

  const ICONS = {
    chat: ["M21 15a2 2 0 0 1-2 2H7l-4 4V5a2 2 0 0 1 2-2h14a2 2 0 0 1 2 2z"],
    close: ["M18 6 6 18", "M6 6l12 12"],
    down: ["M6 9l6 6 6-6"],
    thumbUp: ["M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3z", "M7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3"],
    thumbDown: ["M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3z", "M17 2h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17"],
  };

  const URL_PATTERN = /\bhttps?:\/\/[^\s<>"']+/gi;
  const TRAILING_PUNCTUATION = /[.,;:!?)\]}]+$/;

  /** Appends text, turning http(s) URLs into links built with textContent (never markup). */
  function appendText(node, text, linkify) {
    if (!linkify) {
      node.textContent = text;
      return;
    }
    URL_PATTERN.lastIndex = 0;
    let last = 0;
    let match;
    while ((match = URL_PATTERN.exec(text)) !== null) {
      const url = match[0].replace(TRAILING_PUNCTUATION, "");
      if (match.index > last) node.appendChild(document.createTextNode(text.slice(last, match.index)));
      const link = el("a", { href: url, target: "_blank", rel: "noopener noreferrer nofollow" });
      link.textContent = url;
      node.appendChild(link);
      last = match.index + url.length;
      URL_PATTERN.lastIndex = last;
    }
    if (last < text.length) node.appendChild(document.createTextNode(text.slice(last)));
  }

  function formatTime(iso) {
    const date = iso ? new Date(iso) : null;
    if (!date || isNaN(date.getTime())) return "";
    try {
      return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
    } catch (e) {
      return date.toLocaleString();
    }
  }

  // -------------------------------------------------------------------------------------------
  // Building the widget
  // -------------------------------------------------------------------------------------------

  function buildUi() {
    const host = el("div", { id: HOST_ID });
    // Outer page rules could still style the host element itself; reset it inline.
    host.style.setProperty("all", "initial");
    host.style.setProperty("--chat-color", config.color);
    const shadow = host.attachShadow({ mode: "open" });

    const stylesheet = el("link", { rel: "stylesheet", href: config.css });
    const root = el("div", { class: "root", hidden: true }); // shown once the CSS has loaded

    const badge = el("span", { class: "badge", hidden: true });
    const launcher = el(
      "button",
      {
        type: "button",
        class: "launcher",
        "data-testid": "chat-launcher",
        "aria-label": TEXT.open,
        "aria-expanded": "false",
        "aria-controls": "nw-panel",
      },
      [icon("chat", ICONS.chat), icon("down", ICONS.down), badge]
    );

    const title = el("h2", { class: "title", id: "nw-title", text: config.title });
    const closeButton = el(
      "button",
      { type: "button", class: "close", "aria-label": TEXT.close, "data-testid": "chat-close" },
      [icon("close", ICONS.close)]
    );
    const header = el("header", { class: "header" }, [title, closeButton]);

    const status = el("div", {
      class: "status",
      role: "status",
      "data-testid": "chat-status",
      "data-state": "connecting",
      text: TEXT.state.connecting,
    });

    const typing = el(
      "div",
      { class: "typing", "data-testid": "chat-typing", hidden: true },
      [
        el("span", { class: "sr-only", "data-typing-label": "", text: TEXT.typing }),
        el("span", { class: "dot", "aria-hidden": "true" }),
        el("span", { class: "dot", "aria-hidden": "true" }),
        el("span", { class: "dot", "aria-hidden": "true" }),
      ]
    );
    const messages = el(
      "div",
      {
        class: "messages",
        role: "log",
        "aria-live": "polite",
        "aria-label": TEXT.conversation,
        "data-testid": "chat-messages",
        tabindex: "0", // a scrollable region must be reachable by keyboard
      },
      [typing]
    );

    const input = el("textarea", {
      id: "nw-input",
      class: "input",
      rows: "1",
      // No maxlength: it would cut a pasted message silently. The length hint says instead.
      placeholder: TEXT.placeholder,
      autocomplete: "off",
      "aria-describedby": "nw-length",
      "data-testid": "chat-input",
    });
    const lengthHint = el("p", {
      id: "nw-length",
      class: "length",
      "aria-live": "polite",
      "data-testid": "chat-length",
      hidden: true,
    });
    const label = el("label", { class: "sr-only", for: "nw-input", text: TEXT.inputLabel });
    const sendButton = el("button", {
      type: "submit",
      class: "send",
      "data-testid": "chat-send",
      text: TEXT.send,
    });
    const form = el("form", { class: "composer", novalidate: true }, [label, input, sendButton, lengthHint]);

    const panel = el(
      "section",
      {
        id: "nw-panel",
        class: "panel",
        role: "dialog",
        "aria-labelledby": "nw-title",
        "data-testid": "chat-panel",
        hidden: true,
      },
      [header, status, messages, form]
    );

    root.appendChild(launcher);
    root.appendChild(panel);
    shadow.appendChild(stylesheet);
    shadow.appendChild(root);

    return { host, shadow, stylesheet, root, launcher, badge, panel, closeButton, status, messages, typing, form, input, lengthHint };
  }

  const ui = buildUi();

  // -------------------------------------------------------------------------------------------
  // State
  // -------------------------------------------------------------------------------------------

  const state = {
    open: false,
    conversationStatus: "bot", // "bot" | "needs_human" | "closed"
    maxChars: MAX_CHARS, // the server's limit on a message, once its history frame says it
    records: [], // rendered bubbles, in order
    byServerId: new Map(),
    byClientId: new Map(),
    failed: new Map(), // clientId -> {id, text, created}: rejected messages kept across re-renders
    awaiting: new Set(), // client ids sent and still waiting for the bot's reply
    quickRow: null,
    ratingRow: null, // "How did we do?" (then the thanks) after the team closed the conversation
    typingTimer: null,
    agentTypingUntil: 0, // a person of the team is writing until then (ms since the epoch)
    agentTypingTimer: null,
    typingSentAt: 0, // when this tab last told the team that the customer is writing
  };

  const conn = {
    socket: null,
    ready: false, // the history frame of this socket has arrived
    withConversation: false, // this socket asked to resume a stored conversation
    sent: new Set(), // client ids already sent on this socket
    attempts: 0,
    reconnectTimer: null,
    pingTimer: null,
    lastPingAt: 0,
    lastFrameAt: 0,
  };

  // -------------------------------------------------------------------------------------------
  // Rendering messages
  // -------------------------------------------------------------------------------------------

  function isNearBottom() {
    const list = ui.messages;
    return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }

  function scrollToBottom() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  /** Runs fn, then keeps the list pinned to the bottom if it was there (or if forced). */
  function keepScrolled(force, fn) {
    const stick = force || isNearBottom();
    const result = fn();
    if (stick) scrollToBottom();
    return result;
  }

  function indexRecord(record) {
    if (record.serverId) record.bubble.setAttribute("data-id", record.serverId);
    if (record.serverId) state.byServerId.set(record.serverId, record);
    if (record.clientId) state.byClientId.set(record.clientId, record);
  }

  /**
   * Adds one bubble at the end of the list.
   * msg: {role, text, serverId?, clientId?, created?, status?, suggestions?, greeting?,
   *       decision?, helpful?}
   */
  function renderMessage(msg) {
    const role = ROLES.indexOf(msg.role) >= 0 ? msg.role : "system";
    const row = el("div", { class: "row row--" + role });
    if (role === "agent") row.appendChild(el("div", { class: "label", text: TEXT.agentLabel }));

    const bubble = el("div", {
      class: "bubble",
      "data-testid": "chat-message",
      "data-role": role,
      "data-greeting": msg.greeting ? "true" : null,
      title: formatTime(msg.created) || null,
    });
    appendText(bubble, String(msg.text || ""), role !== "customer");
    row.appendChild(bubble);

    const record = {
      role,
      row,
      bubble,
      meta: null,
      text: String(msg.text || ""),
      created: msg.created || "",
      serverId: msg.serverId ? String(msg.serverId) : "",
      clientId: msg.clientId ? String(msg.clientId) : "",
      suggestions: Array.isArray(msg.suggestions) ? msg.suggestions : [],
      status: "",
      feedback: null, // the "Did this answer help?" buttons, under a bot's answer
      helpful: null, // what they show
      helpfulSaved: null, // what the server stored
    };
    if (role === "customer") {
      if (record.clientId) bubble.setAttribute("data-client-id", record.clientId);
      record.meta = el("div", { class: "meta" });
      row.appendChild(record.meta);
      setDelivery(record, msg.status || "delivered");
    }
    if (role === "bot" && msg.decision === "answer" && record.serverId) {
      record.feedback = feedbackButtons(record);
      row.appendChild(record.feedback);
      setHelpful(record, msg.helpful, true);
    }

    ui.messages.insertBefore(row, ui.typing);
    state.records.push(record);
    indexRecord(record);
    return record;
  }

  /** Two small buttons under an answer of the bot: did it help? The customer may change their
   * mind; the server's "feedback" frame confirms (and, after a no, offers what to do next). */
  function feedbackButtons(record) {
    const group = el("div", { class: "feedback", role: "group", "aria-label": TEXT.helpfulQuestion, "data-testid": "chat-feedback" });
    [
      [true, "thumbUp", TEXT.helpful],
      [false, "thumbDown", TEXT.notHelpful],
    ].forEach(([helpful, name, label]) => {
      const button = el(
        "button",
        {
          type: "button",
          class: "feedback__btn",
          "aria-label": label,
          title: label,
          "aria-pressed": "false",
          "data-helpful": String(helpful),
        },
        [icon(name, ICONS[name])]
      );
      button.addEventListener("click", () => {
        if (record.helpful === helpful) return;
        // Shown pressed at once; the server's "feedback" frame confirms it, an error undoes it.
        if (transmit({ type: "feedback", message: record.serverId, helpful })) setHelpful(record, helpful);
      });
      group.appendChild(button);
    });
    return group;
  }

  /** `saved`: the server stored it (the history, or its "feedback" frame), so that an error
   * about a later press goes back to it. */
  function setHelpful(record, helpful, saved = false) {
    record.helpful = helpful === true || helpful === false ? helpful : null;
    if (saved) record.helpfulSaved = record.helpful;
    if (!record.feedback) return;
    record.feedback.querySelectorAll("button").forEach((button) => {
      button.setAttribute("aria-pressed", String(button.dataset.helpful === String(record.helpful)));
    });
  }

  /** A local, muted system line (errors, hand-off note); never sent to the server. */
  function addNote(text) {
    return keepScrolled(false, () => renderMessage({ role: "system", text }));
  }

  function setDelivery(record, status) {
    record.status = status;
    record.bubble.setAttribute("data-status", status);
    const meta = record.meta;
    meta.textContent = "";
    meta.className = "meta meta--" + status;
    if (status === "failed" || status === "unanswered") {
      meta.removeAttribute("aria-hidden");
      const retry = el("button", { type: "button", class: "retry", text: TEXT.retry });
      retry.addEventListener("click", () => retryMessage(record));
      meta.appendChild(document.createTextNode(TEXT[status] + " "));
      meta.appendChild(retry);
    } else {
      // "Sending…" and the check mark are visual only; announcing them would be noise.
      meta.setAttribute("aria-hidden", "true");
      meta.textContent = status === "sending" ? TEXT.sending : "✓";
    }
  }

  function markDelivered(clientId, serverId) {
    removePending([clientId]);
    state.failed.delete(clientId);
    const record = state.byClientId.get(clientId);
    if (!record) return;
    if (serverId && !record.serverId) {
      record.serverId = String(serverId);
      indexRecord(record);
    }
    if (record.status !== "delivered") setDelivery(record, "delivered");
  }

  function renderGreeting() {
    renderMessage({ role: "bot", text: config.greeting, greeting: true });
  }

  /** Removes every bubble (the typing indicator stays) and forgets the indexes. */
  function clearMessages() {
    state.records.forEach((record) => record.row.remove());
    removeQuickReplies();
    removeRating();
    state.records = [];
    state.byServerId.clear();
    state.byClientId.clear();
  }

  function renderLocalOnly() {
    state.failed.forEach((entry) => {
      if (!state.byClientId.has(entry.id)) {
        renderMessage({ role: "customer", text: entry.text, clientId: entry.id, created: entry.created, status: "failed" });
      }
    });
    readPending().forEach((entry) => {
      if (!state.byClientId.has(entry.id)) {
        renderMessage({ role: "customer", text: entry.text, clientId: entry.id, created: entry.created, status: "sending" });
      }
    });
  }

  // -------------------------------------------------------------------------------------------
  // Quick replies and typing indicator
  // -------------------------------------------------------------------------------------------

  function suggestionLabel(item) {
    if (typeof item === "string") return item.trim();
    if (item && typeof item === "object") return String(item.label || item.text || "").trim();
    return "";
  }

  function removeQuickReplies() {
    if (state.quickRow) state.quickRow.remove();
    state.quickRow = null;
  }

  function showQuickReplies(record) {
    removeQuickReplies();
    const labels = record.suggestions.map(suggestionLabel).filter(Boolean).slice(0, MAX_QUICK_REPLIES);
    if (!labels.length) return;
    const row = el("div", { class: "quick", role: "group", "aria-label": TEXT.quickReplies });
    labels.forEach((label) => {
      const button = el("button", { type: "button", class: "quick__btn", "data-testid": "chat-quick-reply", text: label });
      button.addEventListener("click", () => {
        sendText(label);
        ui.input.focus(); // the clicked button is gone; keep keyboard users in the composer
      });
      row.appendChild(button);
    });
    ui.messages.insertBefore(row, record.row.nextSibling);
    state.quickRow = row;
  }

  /** After a full re-render: suggestions of the last bot bubble, unless someone spoke since. */
  function restoreQuickReplies() {
    let lastBot = null;
    state.records.forEach((record) => {
      if (record.role === "bot") lastBot = record;
      else if (record.role !== "system") lastBot = null;
    });
    if (lastBot) showQuickReplies(lastBot);
  }

  function updateTyping() {
    const bot = state.awaiting.size > 0;
    const agent = state.agentTypingUntil > Date.now();
    const show = bot || agent;
    clearTimeout(state.typingTimer);
    if (bot) {
      state.typingTimer = setTimeout(() => {
        state.awaiting.clear();
        updateTyping();
      }, TYPING_TIMEOUT_MS);
    }
    const label = ui.typing.querySelector("[data-typing-label]");
    const text = bot ? TEXT.typing : TEXT.agentTyping;
    if (label.textContent !== text) label.textContent = text;
    ui.typing.dataset.who = bot ? "bot" : "agent";
    if (ui.typing.hidden === !show) return;
    keepScrolled(false, () => {
      ui.typing.hidden = !show;
    });
  }

  /** A person of the team is writing a reply (the server repeats it while they do). */
  function onTyping(frame) {
    if (frame.role !== "agent") return;
    state.agentTypingUntil = Date.now() + AGENT_TYPING_MS;
    clearTimeout(state.agentTypingTimer);
    state.agentTypingTimer = setTimeout(updateTyping, AGENT_TYPING_MS + 50);
    updateTyping();
  }

  function agentStoppedTyping() {
    state.agentTypingUntil = 0;
    clearTimeout(state.agentTypingTimer);
    updateTyping();
  }

  /** While the customer writes to a person (never to the bot, which does not read along),
   * the team's page of the conversation shows it. */
  function tellTyping() {
    if (state.conversationStatus !== "needs_human" || !conn.ready || !ui.input.value.trim()) return;
    const now = Date.now();
    if (now - state.typingSentAt < TYPING_EVERY_MS) return;
    if (transmit({ type: "typing" })) state.typingSentAt = now;
  }

  function startWaiting(clientId) {
    // Once a person has taken over, the bot does not answer, so there is nothing to wait for.
    if (state.conversationStatus === "needs_human") return;
    state.awaiting.add(clientId);
    updateTyping();
  }

  function stopWaiting(clientId) {
    if (clientId) state.awaiting.delete(clientId);
    else state.awaiting.clear();
    updateTyping();
  }

  // -------------------------------------------------------------------------------------------
  // Sending
  // -------------------------------------------------------------------------------------------

  function transmit(frame) {
    const socket = conn.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    try {
      socket.send(JSON.stringify(frame));
      return true;
    } catch (e) {
      return false;
    }
  }

  /** Sends every shown pending message not yet sent on this socket, oldest first. */
  function flushPending() {
    if (!conn.ready) return;
    readPending().forEach((entry) => {
      // Entries another tab queued are sent by that tab (or after our next history re-render).
      if (conn.sent.has(entry.id) || !state.byClientId.has(entry.id)) return;
      if (!transmit({ type: "message", text: entry.text, id: entry.id })) return;
      conn.sent.add(entry.id);
      startWaiting(entry.id);
    });
  }

  function queueAndSend(entry) {
    addPending(entry);
    // A closed conversation cannot take new messages: start a fresh one, which flushes the queue.
    if (state.conversationStatus === "closed" && conn.ready) restartConnection();
    else flushPending();
  }

  /** Shows a customer message and sends it (now, or once connected). Returns false if empty. */
  function sendText(raw) {
    const text = String(raw === null || raw === undefined ? "" : raw).trim();
    if (!text) return false;
    const entry = { id: newId(), text, created: new Date().toISOString() };
    state.typingSentAt = 0; // the next message shows as being written at once
    removeQuickReplies();
    removeRating();
    keepScrolled(true, () =>
      renderMessage({ role: "customer", text, clientId: entry.id, created: entry.created, status: "sending" })
    );
    queueAndSend(entry);
    return true;
  }

  function retryMessage(record) {
    const entry = { id: record.clientId, text: record.text, created: record.created };
    state.failed.delete(entry.id);
    conn.sent.delete(entry.id);
    setDelivery(record, "sending");
    queueAndSend(entry);
  }

  // -------------------------------------------------------------------------------------------
  // Server frames
  // -------------------------------------------------------------------------------------------

  function onHistory(frame) {
    conn.ready = true;
    // The server's limit on a message's length (CHATBOT_MAX_MESSAGE_CHARS).
    if (Number.isInteger(frame.max_chars) && frame.max_chars > 0) {
      state.maxChars = frame.max_chars;
      showLength();
    }
    conn.attempts = 0; // a connection counts as successful once the server has spoken
    const closed = frame.status === "closed";
    state.conversationStatus = closed || frame.status === "needs_human" ? frame.status : "bot";
    if (closed) forgetConversation();
    else if (typeof frame.conversation === "string" && frame.conversation) {
      store.set(KEYS.conversation, frame.conversation);
    }

    const messages = Array.isArray(frame.messages) ? frame.messages.filter((m) => m && typeof m === "object") : [];
    const stored = messages.map((m) => m.client_id).filter(Boolean).map(String);
    removePending(stored);
    stored.forEach((id) => state.failed.delete(id));

    keepScrolled(true, () => {
      clearMessages();
      renderGreeting();
      messages.forEach((m) =>
        renderMessage({
          role: m.role,
          text: m.text,
          serverId: m.id,
          clientId: m.client_id,
          created: m.created,
          suggestions: m.suggestions,
          status: "delivered",
          decision: m.decision,
          helpful: m.helpful,
        })
      );
      renderLocalOnly();
      restoreQuickReplies();
      if (closed) renderMessage({ role: "system", text: TEXT.ended });
      // Waiting for a person, and none has written since: say so again after a reload.
      const lastAnswer = messages.filter((m) => m.role !== "customer").pop();
      if (state.conversationStatus === "needs_human" && (!lastAnswer || lastAnswer.role !== "agent")) {
        renderMessage({ role: "system", text: TEXT.waiting });
      }
    });

    if (closed && readPending().length && conn.withConversation) restartConnection();
    else flushPending();
  }

  function onAck(frame) {
    if (frame.id) markDelivered(String(frame.id), frame.message);
  }

  function onReply(frame) {
    if (frame.in_reply_to) {
      markDelivered(String(frame.in_reply_to));
      stopWaiting(String(frame.in_reply_to));
    } else {
      stopWaiting(null);
    }
    const id = frame.id === null || frame.id === undefined ? "" : String(frame.id);
    if (id && state.byServerId.has(id)) return;

    keepScrolled(false, () => {
      removeQuickReplies();
      const record = renderMessage({
        role: "bot",
        text: frame.text,
        serverId: id,
        suggestions: frame.suggestions,
        created: new Date().toISOString(), // as it arrives; the history gives the stored time
        decision: frame.decision,
      });
      showQuickReplies(record);
    });
    if (frame.handoff === true) {
      state.conversationStatus = "needs_human";
      stopWaiting(null);
      addNote(TEXT.handoff);
    }
    notifyUnread();
  }

  function onMessage(frame) {
    const id = frame.id === null || frame.id === undefined ? "" : String(frame.id);
    if (id && state.byServerId.has(id)) return;
    // Staff messages say who answers now: the team ("needs_human") or the bot again ("bot"); or
    // that the team closed the conversation ("closed"): the next message starts a new one.
    if (frame.status === "bot" || frame.status === "needs_human" || frame.status === "closed") {
      state.conversationStatus = frame.status;
    }
    if (frame.status === "closed") {
      conversationClosed();
      removeQuickReplies();
    }
    // Our own message echoed (e.g. sent from another tab): treat it as an acknowledgement.
    if (frame.role === "customer" && frame.client_id && state.byClientId.has(String(frame.client_id))) {
      markDelivered(String(frame.client_id), id);
      return;
    }
    if (frame.role === "agent") {
      agentStoppedTyping();
      stopWaiting(null);
      removeQuickReplies();
    }
    keepScrolled(false, () =>
      renderMessage({ role: frame.role, text: frame.text, serverId: id, created: frame.created, clientId: frame.client_id })
    );
    if (frame.status === "closed") offerRating();
    if (frame.role !== "customer") notifyUnread();
  }

  /** The team closed the conversation: nothing more will answer it; the next message starts a
   * new one (`queueAndSend`). */
  function conversationClosed() {
    state.conversationStatus = "closed";
    forgetConversation();
    stopWaiting(null);
  }

  /** Asks the customer to rate the conversation the team just closed (1 to 5), on the
   * connection that still holds it: once they write again, a new conversation begins and the
   * question goes. */
  function offerRating() {
    removeRating();
    const socket = conn.socket;
    const row = el("div", { class: "rating", role: "group", "aria-label": TEXT.rateQuestion, "data-testid": "chat-rating" });
    row.appendChild(el("span", { class: "rating__label", text: TEXT.rateQuestion }));
    for (let score = 1; score <= 5; score += 1) {
      const button = el("button", {
        type: "button",
        class: "rating__btn",
        "aria-label": TEXT.rateScore(score),
        "data-score": String(score),
        text: "★",
      });
      button.addEventListener("click", () => {
        if (conn.socket !== socket || !transmit({ type: "rate", score })) {
          removeRating();
          return;
        }
        row.replaceChildren(el("span", { class: "rating__label", text: TEXT.rated }));
        ui.input.focus();
      });
      row.appendChild(button);
    }
    keepScrolled(false, () => ui.messages.insertBefore(row, ui.typing));
    state.ratingRow = row;
  }

  function removeRating() {
    if (state.ratingRow) state.ratingRow.remove();
    state.ratingRow = null;
  }

  function onError(frame) {
    if (frame.code === "conversation_closed") {
      // The team closed it just before this message arrived (the message is kept there).
      conversationClosed();
      addNote(TEXT.ended);
      return;
    }
    addNote(String(frame.detail || frame.code || TEXT.error));
    if (frame.message !== undefined) {
      // A feedback the server did not store (refused, or an answer no longer there).
      const rated = state.byServerId.get(String(frame.message));
      if (rated) setHelpful(rated, rated.helpfulSaved, true);
      return;
    }
    const clientId = frame.in_reply_to ? String(frame.in_reply_to) : "";
    if (!clientId) return;
    stopWaiting(clientId);
    const record = state.byClientId.get(clientId);
    if (!record) return;
    if (record.status === "delivered") {
      // Stored, but the bot could not answer it: sending it again (same id) asks again.
      if (frame.code === "internal_error" || frame.code === "agent_unavailable") {
        setDelivery(record, "unanswered");
      }
      return;
    }
    // The server has answered for this message, so it is no longer pending: keep it as failed
    // (with a Retry button) instead of resending it on every reconnect.
    removePending([clientId]);
    conn.sent.delete(clientId);
    state.failed.set(clientId, { id: clientId, text: record.text, created: record.created });
    setDelivery(record, "failed");
  }

  /** The server stored what the customer said of an answer; after a no, while the bot has the
   * conversation, it says what the customer can do next (with a quick reply to a person). */
  function onFeedback(frame) {
    const record = state.byServerId.get(String(frame.message));
    if (record) setHelpful(record, frame.helpful, true);
    if (typeof frame.text !== "string" || !frame.text) return;
    keepScrolled(false, () => {
      removeQuickReplies();
      showQuickReplies(renderMessage({ role: "system", text: frame.text, suggestions: frame.suggestions }));
    });
  }

  const HANDLERS = {
    history: onHistory,
    ack: onAck,
    reply: onReply,
    message: onMessage,
    error: onError,
    typing: onTyping,
    feedback: onFeedback,
    pong() {},
    rated() {},
  };

  function handleFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    const handler = Object.prototype.hasOwnProperty.call(HANDLERS, frame.type) ? HANDLERS[frame.type] : null;
    if (handler) handler(frame);
  }

  // -------------------------------------------------------------------------------------------
  // Connection
  // -------------------------------------------------------------------------------------------

  function setConnectionState(name) {
    ui.status.setAttribute("data-state", name);
    if (ui.status.textContent !== TEXT.state[name]) ui.status.textContent = TEXT.state[name];
  }

  function socketUrl() {
    const params = new URLSearchParams();
    const conversation = store.get(KEYS.conversation);
    if (conversation) params.set("conversation", conversation);
    params.set("visitor", visitorId());
    return { url: config.server + "/ws/chat/?" + params.toString(), withConversation: Boolean(conversation) };
  }

  function connect() {
    clearTimeout(conn.reconnectTimer);
    conn.reconnectTimer = null;
    if (conn.socket) return;

    const target = socketUrl();
    let socket;
    try {
      socket = new WebSocket(target.url);
    } catch (e) {
      setConnectionState("offline");
      scheduleReconnect();
      return;
    }
    conn.socket = socket;
    conn.ready = false;
    conn.withConversation = target.withConversation;
    conn.sent = new Set();

    socket.onopen = () => {
      conn.lastFrameAt = Date.now();
      setConnectionState("online");
      startPing();
    };
    socket.onmessage = (event) => {
      conn.lastFrameAt = Date.now();
      handleFrame(event.data);
    };
    socket.onclose = (event) => dropSocket(socket, event.code);
    // Browsers follow "error" with "close" (which carries the close code we need, e.g. 4404);
    // the timer only covers a close event that never comes.
    socket.onerror = () => setTimeout(() => dropSocket(socket, 0), 1000);
  }

  /** Detaches and closes the current socket; nothing scheduled. */
  function detachSocket() {
    const socket = conn.socket;
    conn.socket = null;
    conn.ready = false;
    stopPing();
    stopWaiting(null); // a reply cannot arrive on a dead socket; resent messages re-arm it
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    try {
      if (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN) socket.close(1000);
    } catch (e) {
      /* already closing */
    }
  }

  /** The socket closed or failed: go offline and try again later. */
  function dropSocket(socket, code) {
    if (socket !== conn.socket) return; // a stale socket's late event
    if (code === CLOSE_UNKNOWN_CONVERSATION) forgetConversation();
    detachSocket();
    setConnectionState("offline");
    scheduleReconnect();
  }

  /** Reconnect now without the stored conversation (it has just been forgotten). */
  function restartConnection() {
    forgetConversation();
    detachSocket();
    setConnectionState("connecting");
    connect();
  }

  function backoffDelay(attempt) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * Math.pow(2, attempt));
    return Math.round(base * (0.8 + Math.random() * 0.4)); // ±20% so clients do not stampede
  }

  function scheduleReconnect() {
    if (conn.reconnectTimer) return;
    const delay = backoffDelay(conn.attempts);
    conn.attempts = Math.min(conn.attempts + 1, 16);
    conn.reconnectTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (conn.socket) return;
    conn.attempts = 0;
    connect();
  }

  function startPing() {
    stopPing();
    conn.pingTimer = setInterval(() => {
      // No frame at all since the previous ping (not even its pong): the link is dead.
      if (conn.lastPingAt && conn.lastFrameAt < conn.lastPingAt) {
        dropSocket(conn.socket, 0);
        return;
      }
      conn.lastPingAt = Date.now();
      transmit({ type: "ping" });
    }, PING_MS);
  }

  function stopPing() {
    clearInterval(conn.pingTimer);
    conn.pingTimer = null;
    conn.lastPingAt = 0;
  }

  // -------------------------------------------------------------------------------------------
  // Open / close and input handling
  // -------------------------------------------------------------------------------------------

  function notifyUnread() {
    if (!state.open) ui.badge.hidden = false;
  }

  function open(options) {
    const focus = !options || options.focus !== false;
    if (!state.open) {
      state.open = true;
      ui.panel.hidden = false;
      ui.root.classList.add("is-open");
      ui.launcher.setAttribute("aria-expanded", "true");
      ui.badge.hidden = true;
      scrollToBottom();
    }
    if (focus) ui.input.focus();
  }

  function close(options) {
    if (!state.open) return;
    const returnFocus = (options && options.returnFocus) || ui.shadow.activeElement !== null;
    state.open = false;
    ui.panel.hidden = true;
    ui.root.classList.remove("is-open");
    ui.launcher.setAttribute("aria-expanded", "false");
    if (returnFocus) ui.launcher.focus();
  }

  function autoGrow() {
    const input = ui.input;
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 132) + "px";
  }

  /** Says how long the message may still be near the server's limit, and how much too long
   * past it (when Send does nothing). Returns whether the text fits. */
  function showLength() {
    // Characters as the server counts them (code points: an emoji is one, not two).
    const length = Array.from(ui.input.value.trim()).length;
    const max = state.maxChars;
    const fits = length <= max;
    const hint = ui.lengthHint;
    hint.hidden = length < max * 0.9;
    hint.textContent = fits ? TEXT.charsLeft(max - length) : TEXT.tooLong(length - max, max);
    hint.classList.toggle("length--over", !fits);
    ui.input.setAttribute("aria-invalid", fits ? "false" : "true");
    return fits;
  }

  function submitInput() {
    if (!showLength()) {
      ui.input.focus();
      return; // nothing is cut or lost: the customer shortens it
    }
    if (sendText(ui.input.value)) {
      ui.input.value = "";
      autoGrow();
      showLength();
    }
    ui.input.focus();
  }

  function onInputKeydown(event) {
    // Enter sends; Shift+Enter is a newline; Enter while an IME is composing is left alone.
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    submitInput();
  }

  function bindEvents() {
    ui.launcher.addEventListener("click", () => (state.open ? close({ returnFocus: true }) : open()));
    ui.closeButton.addEventListener("click", () => close({ returnFocus: true }));
    ui.root.addEventListener("keydown", (event) => {
      if (state.open && (event.key === "Escape" || event.key === "Esc")) {
        event.preventDefault();
        close({ returnFocus: true });
      }
    });
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      submitInput();
    });
    ui.input.addEventListener("keydown", onInputKeydown);
    ui.input.addEventListener("input", () => {
      autoGrow();
      showLength();
      tellTyping();
    });

    window.addEventListener("online", reconnectNow);
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") reconnectNow();
    });
    // Leaving the page: close cleanly (keeps the page eligible for the back/forward cache).
    window.addEventListener("pagehide", (event) => {
      if (!event.persisted) return;
      clearTimeout(conn.reconnectTimer);
      conn.reconnectTimer = null;
      detachSocket();
    });
    window.addEventListener("pageshow", (event) => {
      if (event.persisted) reconnectNow();
    });
  }

  function revealWhenStyled() {
    let shown = false;
    const reveal = () => {
      if (shown) return;
      shown = true;
      ui.root.hidden = false;
    };
    ui.stylesheet.addEventListener("load", reveal);
    ui.stylesheet.addEventListener("error", reveal); // unstyled beats invisible
    setTimeout(reveal, CSS_TIMEOUT_MS);
  }

  function mount() {
    if (document.getElementById(HOST_ID)) return;
    document.body.appendChild(ui.host);
    if (config.openOnLoad) open({ focus: false });
  }

  // -------------------------------------------------------------------------------------------
  // Start
  // -------------------------------------------------------------------------------------------

  window.ChatWidget = {
    open() {
      open();
    },
    close() {
      close();
    },
    send(text) {
      const sent = sendText(text);
      if (sent) open({ focus: false });
      return sent;
    },
  };

  // Until the first history frame arrives: the greeting plus anything still queued from before.
  renderGreeting();
  renderLocalOnly();
  bindEvents();
  revealWhenStyled();
  setConnectionState("connecting");
  connect();

  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount, { once: true });
})();
