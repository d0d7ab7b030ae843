/*
 * immortus.js: follow immortus-async jobs from a browser. No build step, no dependencies.
 *
 * As a classic script (sets window.Immortus):
 *   <script src="http://bridge.example:8765/immortus.js"></script>
 * As an ES module (immortus.mjs wraps this file):
 *   import Immortus, { verify, feed, create } from "http://bridge.example:8765/immortus.mjs";
 *
 *   const { job_id, token } = await Immortus.create("/jobs", { path: "data.csv" });
 *   const state = await Immortus.verify({ job_id, token }, {
 *     onProgress: (progress, state) => { bar.value = progress; },
 *     onStatus: (status, state) => { label.textContent = status; },
 *   });
 *
 * verify() follows the job over a websocket, reconnects with jittered exponential
 * backoff and resubscribes with since_seq; when WebSocket is missing or keeps
 * failing it reads the job's Server-Sent Events (GET /jobs/<id>/events, served by
 * the ASGI mount), and when those fail too it polls GET /verify. Its promise
 * resolves with the terminal state (failed jobs included: look at state.status)
 * and rejects with an ImmortusError when following cannot succeed: a refused
 * token, a bad or unknown job id, an origin the server does not allow, a job that
 * Redis lost; with the AbortSignal's reason when { signal } is aborted.
 * abort({ job_id, token }) asks the server to abort the job (POST
 * /jobs/<id>/abort, when the server allows aborts); the job's followers then get
 * its end ("aborted", unless it ended otherwise first).
 *
 * Immortus.feed({ owner: "user-42" }, { onState: (state) => ... }) follows every
 * job of one owner (enqueued with owner=), as each is queued, changes and ends.
 * The protocol is described in docs/protocol.md; immortus.d.ts has the types.
 */
(function (global) {
  "use strict";

  if (global.Immortus && global.Immortus.verify) {
    return; // loaded twice (a classic script and the module): keep the first
  }

  // Where this script came from: the bridge, or the app's mount of the ASGI app.
  // document.currentScript is null when the file is imported by immortus.mjs,
  // which then sets Immortus.baseUrl itself.
  var script = global.document && global.document.currentScript;
  var scriptBase = script && script.src ? new URL(".", script.src).href : null;

  // The refusals that a later attempt may overcome; every other code (a refused
  // token or origin, a bad job id, a lost job, and codes this client does not
  // know) rejects, so that a page never waits for what cannot come.
  var RETRYABLE = ["redis_unavailable", "internal_error"];

  class ImmortusError extends Error {
    constructor(code, message) {
      super(message);
      this.name = "ImmortusError";
      this.code = code;
    }
  }

  var defaults = {
    backoffMin: 250, // ms before the first reconnection
    backoffMax: 10000, // ms, the longest wait between reconnections
    socketFailures: 4, // failed connections in a row before the next transport
    pollInterval: 1000, // ms between two reads of /verify
  };

  // The server's root, its path included (a mount: https://app.example/immortus),
  // without the trailing slash.
  function httpBase(url) {
    var base = new URL(url || Immortus.baseUrl || scriptBase || global.location.href);
    base.protocol = base.protocol.replace(/^ws/, "http");
    return (base.origin + base.pathname).replace(/\/+$/, "");
  }

  function callSafely(callback, first, second) {
    if (typeof callback !== "function") return;
    try {
      callback(first, second);
    } catch (error) {
      console.error("immortus: a callback failed", error);
    }
  }

  class Follower {
    constructor(job, handlers, resolve, reject) {
      if (!job || typeof job.job_id !== "string" || !job.job_id) {
        throw new ImmortusError("invalid_job_id", "verify() needs { job_id, token }");
      }
      this.job = job;
      this.handlers = handlers || {};
      this.signal = this.handlers.signal || null;
      // Aborts the fetches of the event stream and of /verify when we are done.
      this.fetches = new AbortController();
      this.options = Object.assign({}, defaults, job);
      this.base = httpBase(job.url);
      this.resolve = resolve;
      this.reject = reject;
      this.seq = typeof job.since_seq === "number" ? job.since_seq : -1; // of the last state
      this.stalled = null;
      this.status = null;
      this.progress = null;
      this.done = false;
      this.failures = 0; // connections in a row that delivered nothing
      this.attempt = 0; // for the backoff
      this.socket = null;
      this.timer = null;
    }

    start() {
      if (this.signal) {
        if (this.signal.aborted) return this.finish(this.signal.reason);
        this.signal.addEventListener("abort", () => this.finish(this.signal.reason), {
          once: true,
        });
      }
      if (typeof global.WebSocket === "undefined") {
        this.stream();
      } else {
        this.connect();
      }
    }

    async token() {
      var token = this.job.token;
      return typeof token === "function" ? await token() : token;
    }

    deliver(state) {
      // Both transports hand states over in the job's order; what is skipped here
      // is a repeat (a poll that read the same state again). A lower seq is news:
      // Redis lost the job's history and counts again from 1. A terminal state
      // always counts.
      if (this.done) return;
      if (!state.completed && state.seq === this.seq && state.stalled === this.stalled) return;
      this.seq = state.seq; // what a resubscription's since_seq says the client has
      this.stalled = state.stalled;
      this.failures = 0;
      this.attempt = 0;
      callSafely(this.handlers.onState, state);
      if (state.status !== this.status) {
        this.status = state.status;
        callSafely(this.handlers.onStatus, state.status, state);
      }
      if (state.progress !== null && state.progress !== this.progress) {
        this.progress = state.progress;
        callSafely(this.handlers.onProgress, state.progress, state);
      }
      if (state.completed) this.finish(null, state);
    }

    finish(error, state) {
      if (this.done) return;
      this.done = true;
      clearTimeout(this.timer);
      this.fetches.abort();
      if (this.socket) {
        this.socket.onclose = null;
        this.socket.close(1000);
        this.socket = null;
      }
      if (error) this.reject(error);
      else this.resolve(state);
    }

    later(action) {
      var o = this.options;
      var ceiling = Math.min(o.backoffMax, o.backoffMin * Math.pow(2, this.attempt++));
      var delay = ceiling / 2 + (Math.random() * ceiling) / 2; // jitter spreads reconnections
      this.timer = setTimeout(action, delay);
    }

    // Websocket

    message() {
      var message = { type: "subscribe", job_id: this.job.job_id };
      if (this.seq >= 0) message.since_seq = this.seq;
      return message;
    }

    async subscribe(socket) {
      var message = this.message();
      try {
        message.token = await this.token();
      } catch (error) {
        console.error("immortus: the token function failed", error);
        socket.close(1000);
        return;
      }
      if (socket.readyState === 1) socket.send(JSON.stringify(message));
    }

    connect() {
      if (this.done) return;
      var socket;
      try {
        socket = new global.WebSocket(this.base.replace(/^http/, "ws") + "/");
      } catch (error) {
        this.retry();
        return;
      }
      this.socket = socket;
      socket.onopen = () => this.subscribe(socket);
      socket.onmessage = (event) => this.received(socket, event.data);
      socket.onclose = () => {
        if (this.socket === socket) this.socket = null;
        this.failures += 1;
        this.retry();
      };
    }

    received(socket, data) {
      var message;
      try {
        message = JSON.parse(data);
      } catch (error) {
        return;
      }
      if (message.job_id !== undefined && message.job_id !== this.job.job_id) return;
      if (message.type === "state") {
        this.deliver(message);
      } else if (message.type === "error") {
        // On a websocket the connection goes on; an event stream is over: open another.
        var renew = socket ? () => this.subscribe(socket) : () => this.stream();
        this.refused(message.code, message.message, renew);
      }
    }

    // A refusal from either transport (on a websocket, the end of the
    // subscription): renew an expired token when we can, subscribe again later
    // after what may pass, give up on the rest.
    refused(code, text, renew) {
      var renewable = code === "token_expired" && typeof this.job.token === "function";
      if (renewable || RETRYABLE.indexOf(code) >= 0) {
        this.later(renew); // backoff: a token function or a Redis that keeps failing must not spin
      } else {
        this.finish(new ImmortusError(code || "refused", text || code || "refused"));
      }
    }

    retry() {
      if (this.done) return;
      if (this.failures >= this.options.socketFailures) {
        this.failures = 0;
        this.attempt = 0;
        this.stream();
      } else {
        this.later(() => this.connect());
      }
    }

    // Server-Sent Events, read with fetch: it shows the answer's status and body,
    // takes the AbortSignal, and resumes from since_seq as a websocket does.

    async stream() {
      if (this.done) return;
      var url = this.base + this.eventsPath();
      var query = new URLSearchParams();
      var response;
      try {
        var token = await this.token();
        if (token) query.set("token", token);
        if (this.seq >= 0) query.set("since_seq", String(this.seq));
        response = await global.fetch(url + "?" + query, {
          cache: "no-store",
          headers: { Accept: "text/event-stream" },
          signal: this.fetches.signal,
        });
      } catch (error) {
        return this.streamFailed();
      }
      if (!response.ok || !response.body) return this.noStream(response);
      try {
        await this.readEvents(response.body.getReader());
      } catch (error) {
        // a broken connection: resume below
      }
      if (!this.done) this.streamFailed();
    }

    async readEvents(reader) {
      var decoder = new TextDecoder();
      var buffer = "";
      for (;;) {
        var chunk = await reader.read();
        if (chunk.done) return;
        buffer += decoder.decode(chunk.value, { stream: true });
        var end;
        while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
          var block = buffer.slice(0, end);
          buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
          var data = block
            .split(/\r?\n/)
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, ""))
            .join("\n");
          if (data) this.received(null, data);
          if (this.done) return;
        }
      }
    }

    eventsPath() {
      return "/jobs/" + encodeURIComponent(this.job.job_id) + "/events";
    }

    noStream() {
      // No event stream here (the bridge serves none), or a refusal: /verify
      // answers either, with the refusal's code.
      return this.poll();
    }

    streamFailed() {
      if (this.done) return;
      this.failures += 1;
      if (this.failures >= this.options.socketFailures) {
        this.poll();
      } else {
        this.later(() => this.stream());
      }
    }

    // Polling /verify

    async poll() {
      if (this.done) return;
      var url = this.base + "/verify/" + encodeURIComponent(this.job.job_id);
      var response;
      try {
        var token = await this.token();
        if (token) url += "?token=" + encodeURIComponent(token);
        response = await global.fetch(url, { cache: "no-store", signal: this.fetches.signal });
      } catch (error) {
        this.later(() => this.poll());
        return;
      }
      var body = null;
      try {
        body = await response.json();
      } catch (error) {
        body = null;
      }
      if (response.ok && body) {
        this.deliver(body);
        if (!this.done) this.timer = setTimeout(() => this.poll(), this.options.pollInterval);
      } else if (body && body.type === "error") {
        this.refused(body.code, body.message, () => this.poll());
      } else {
        this.later(() => this.poll());
      }
    }
  }

  // An owner's feed: every job of one owner, as it is queued, changes and ends.
  // The same transports as a job's (websocket, then the event stream), with no
  // polling: a feed has no /verify. It never ends by itself.
  class FeedFollower extends Follower {
    constructor(feed, handlers, resolve, reject) {
      if (!feed || typeof feed.owner !== "string" || !feed.owner) {
        throw new ImmortusError("invalid_job_id", "feed() needs { owner }");
      }
      super(Object.assign({ job_id: feed.owner }, feed), handlers, resolve, reject);
      this.seen = new Map(); // job id -> [seq, completed] of the last state delivered
    }

    message() {
      return { type: "subscribe_owner", owner: this.job.owner };
    }

    received(socket, data) {
      var message;
      try {
        message = JSON.parse(data);
      } catch (error) {
        return;
      }
      if (message.owner !== this.job.owner) return;
      if (message.type === "owner_state") {
        this.deliver(message);
      } else if (message.type === "error") {
        var renew = socket ? () => this.subscribe(socket) : () => this.stream();
        this.refused(message.code, message.message, renew);
      }
    }

    deliver(state) {
      // Each (re)subscription starts with a snapshot: what was delivered already
      // is skipped; a terminal state always counts.
      if (this.done) return;
      var last = this.seen.get(state.job_id);
      if (last && state.seq <= last[0] && !(state.completed && !last[1])) return;
      this.seen.set(state.job_id, [state.seq, state.completed]);
      this.failures = 0;
      this.attempt = 0;
      var job = Object.assign({}, state);
      delete job.type;
      delete job.owner;
      callSafely(this.handlers.onState, job);
    }

    eventsPath() {
      return "/owners/" + encodeURIComponent(this.job.owner) + "/events";
    }

    async noStream(response) {
      // No polling for a feed: a refusal rejects, anything else is retried.
      var body = null;
      try {
        body = await response.json();
      } catch (error) {
        body = null;
      }
      if (body && body.type === "error") {
        this.refused(body.code, body.message, () => this.stream());
      } else {
        this.later(() => this.stream());
      }
    }

    streamFailed() {
      if (!this.done) this.later(() => this.stream());
    }
  }

  // handlers: { onState, signal }; see immortus.d.ts.
  function feed(owner, handlers) {
    return new Promise(function (resolve, reject) {
      new FeedFollower(owner, handlers, resolve, reject).start();
    });
  }

  // handlers: { onProgress, onStatus, onState, signal }; see immortus.d.ts.
  function verify(job, handlers) {
    return new Promise(function (resolve, reject) {
      new Follower(job, handlers, resolve, reject).start();
    });
  }

  // Resolves with { type: "abort", job_id, requested } (requested false: the job
  // had ended); rejects with an ImmortusError carrying the server's code.
  async function abort(job, init) {
    if (!job || typeof job.job_id !== "string" || !job.job_id) {
      throw new ImmortusError("invalid_job_id", "abort() needs { job_id, token }");
    }
    var url = httpBase(job.url) + "/jobs/" + encodeURIComponent(job.job_id) + "/abort";
    var token = typeof job.token === "function" ? await job.token() : job.token;
    if (token) url += "?token=" + encodeURIComponent(token);
    var response = await global.fetch(
      url,
      Object.assign({ method: "POST", cache: "no-store" }, init),
    );
    var body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (response.ok && body && body.type === "abort") return body;
    if (body && body.type === "error") throw new ImmortusError(body.code, body.message);
    var where = url.split("?")[0];
    throw new ImmortusError("abort_failed", "POST " + where + " answered " + response.status);
  }

  async function create(url, data, init) {
    var response = await global.fetch(
      url,
      Object.assign(
        {
          method: "POST",
          headers: { "Content-Type": "application/json", Accept: "application/json" },
          body: JSON.stringify(data === undefined ? {} : data),
        },
        init,
      ),
    );
    if (!response.ok) {
      throw new ImmortusError("create_failed", "POST " + url + " answered " + response.status);
    }
    var body = await response.json();
    if (!body || typeof body.job_id !== "string") {
      throw new ImmortusError("create_failed", "POST " + url + " answered no job_id");
    }
    return body;
  }

  var Immortus = {
    verify: verify,
    feed: feed,
    create: create,
    abort: abort,
    ImmortusError: ImmortusError,
    defaults: defaults,
    baseUrl: scriptBase,
  };
  global.Immortus = Immortus;
})(globalThis);
