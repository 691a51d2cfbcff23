/*!
 * The support team's admin pages, live (Django admin).
 *
 * Every admin page lists the conversations waiting for a person (as the page was made, then
 * each one handed off by the bot or whose customer writes while waiting), until someone on the
 * team replies, hands it back or closes it, and counts them in the tab's title. A
 * conversation's page also shows its new messages as they are stored, with what the bot
 * decided, and its status, and who is writing: the customer, or someone else on the team; while
 * its admin writes a reply, it says so (`typing`), for the customer's widget. Listens on the
 * server's /ws/staff/ WebSocket (staff only, this site only) and reconnects with backoff.
 * Everything a customer wrote is shown as text, never as markup.
 */
(function () {
  "use strict";

  const ROLES = { customer: "Customer", bot: "Bot", agent: "Team", system: "System" };
  const STATUSES = {
    bot: "the bot is answering",
    needs_human: "waiting for a person",
    closed: "closed",
  };
  const RETRY_MS = [1000, 2000, 5000, 10000, 30000];
  const TYPING_EVERY_MS = 2000; // while writing a reply: "typing" at most this often
  const TYPING_SHOWN_MS = 6000; // how long someone shows as writing after saying so

  /** Opens the page's socket, and again whenever it drops; returns a function that sends a frame
   * on it when it is open (false when not). */
  function listen(root, onFrame) {
    const state = root.querySelector("[data-live-state]");
    let failures = 0;
    let current = null;
    function show(live) {
      if (!state) return;
      state.dataset.state = live ? "live" : "offline";
      state.textContent = live
        ? state.dataset.liveText
        : "Not live: reconnecting… (reload the page if you have been logged out)";
    }
    function open() {
      const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      const socket = new WebSocket(scheme + window.location.host + root.dataset.staffSocket);
      current = socket;
      socket.addEventListener("open", function () {
        failures = 0;
        show(true);
      });
      socket.addEventListener("message", function (event) {
        let frame;
        try {
          frame = JSON.parse(event.data);
        } catch (error) {
          return;
        }
        onFrame(frame);
      });
      socket.addEventListener("close", function () {
        show(false);
        window.setTimeout(open, RETRY_MS[Math.min(failures, RETRY_MS.length - 1)]);
        failures += 1;
      });
    }
    open();
    return function send(frame) {
      if (!current || current.readyState !== WebSocket.OPEN) return false;
      current.send(JSON.stringify(frame));
      return true;
    };
  }

  function conversationPage(root) {
    const list = root.querySelector("[data-live-messages]");
    const status = root.querySelector("[data-live-status]");
    const typing = root.querySelector("[data-live-typing]");
    const shown = new Set();
    const writers = new Map(); // who is writing -> until when (ms)
    let typingTimer = null;
    function showTyping() {
      const now = Date.now();
      writers.forEach(function (until, who) {
        if (until <= now) writers.delete(who);
      });
      clearTimeout(typingTimer);
      if (writers.size) typingTimer = window.setTimeout(showTyping, TYPING_SHOWN_MS + 50);
      if (!typing) return;
      typing.hidden = writers.size === 0;
      if (writers.size) {
        typing.textContent =
          Array.from(writers.keys()).join(", ") + (writers.size > 1 ? " are writing…" : " is writing…");
      }
    }
    const send = listen(root, function (frame) {
      if (frame.type === "typing") {
        const who = frame.role === "customer" ? "The customer" : frame.name || "Someone on the team";
        writers.set(who, Date.now() + TYPING_SHOWN_MS);
        showTyping();
        return;
      }
      if (frame.type === "feedback") {
        // The customer said whether one of the bot's answers helped (the widget's buttons).
        const said = document.createElement("li");
        said.dataset.role = "feedback";
        said.textContent =
          "The customer said the bot's answer " +
          (frame.helpful ? "helped" : "did not help") +
          ": “" + frame.text + "”";
        list.append(said);
        return;
      }
      if (frame.type !== "message" || shown.has(frame.id)) return;
      shown.add(frame.id);
      // What they were writing has arrived.
      if (frame.role === "customer" || frame.role === "agent") {
        writers.forEach(function (until, who) {
          if ((who === "The customer") === (frame.role === "customer")) writers.delete(who);
        });
      }
      showTyping();
      const item = document.createElement("li");
      item.dataset.role = frame.role;
      const who = document.createElement("strong");
      who.textContent = (ROLES[frame.role] || frame.role) + ": ";
      item.append(who, document.createTextNode(frame.text));
      if (frame.role === "bot" && frame.decision) {
        const why = document.createElement("span");
        why.className = "quiet";
        const intent = frame.intent
          ? ", " + frame.intent + " " + Number(frame.confidence).toFixed(2)
          : "";
        why.textContent = " (" + frame.decision + intent + ")";
        item.append(why);
      }
      list.append(item);
      if (status && frame.status) {
        status.dataset.status = frame.status;
        status.textContent = "Status now: " + (STATUSES[frame.status] || frame.status) + ".";
      }
    });
    // Writing a reply: the customer's widget (and the team's other pages of it) show it.
    const reply = document.getElementById("id_staff_reply");
    const startedFrom = document.getElementById("id_staff_reply_template");
    let sentAt = 0;
    if (reply) {
      // "Use" a suggested answer: into the box, to edit (and send) from there. The reply records
      // which one it started from (the server keeps it only if the reply keeps most of it).
      document.querySelectorAll("[data-suggested-reply]").forEach(function (button) {
        button.addEventListener("click", function () {
          reply.value = button.dataset.suggestedReply;
          if (startedFrom) startedFrom.value = button.dataset.template || "";
          reply.focus();
          reply.dispatchEvent(new Event("input"));
        });
      });
      reply.addEventListener("input", function () {
        if (!reply.value.trim() && startedFrom) startedFrom.value = "";
        const now = Date.now();
        if (!reply.value.trim() || now - sentAt < TYPING_EVERY_MS) return;
        if (send({ type: "typing" })) sentAt = now;
      });
    }
  }

  function inboxPage(root) {
    const list = root.querySelector("[data-live-waiting]");
    const title = document.title;
    // Those waiting when the page was made, then what the server says.
    const items = new Map(
      Array.from(list.querySelectorAll("li[data-conversation]"), function (item) {
        return [item.dataset.conversation, item];
      })
    );
    function count() {
      document.title = items.size ? "(" + items.size + ") " + title : title;
      root.hidden = items.size === 0;
    }
    listen(root, function (frame) {
      if (frame.type === "handled") {
        // Someone on the team replied, handed it back or closed it.
        const handled = items.get(frame.conversation);
        if (handled) handled.remove();
        items.delete(frame.conversation);
        count();
        return;
      }
      if (frame.type !== "waiting") return;
      let item = items.get(frame.conversation);
      if (!item) {
        item = document.createElement("li");
        item.className = "warning";
        item.dataset.conversation = frame.conversation;
        items.set(frame.conversation, item);
      }
      const link = document.createElement("a");
      link.href = frame.url;
      link.textContent =
        frame.reason === "handoff"
          ? "A conversation was handed to the team"
          : "A customer wrote while waiting for the team";
      item.replaceChildren(link, document.createTextNode(": “" + frame.text + "”"));
      list.prepend(item); // the latest first
      count();
    });
    count();
  }

  function start() {
    document.querySelectorAll("[data-staff-socket]").forEach(function (root) {
      if (root.dataset.staffPage === "conversation") conversationPage(root);
      else inboxPage(root);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
