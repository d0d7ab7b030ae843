// Types of immortus.js (window.Immortus) and immortus.mjs, the browser client of
// immortus-async. The wire protocol is described in docs/protocol.md.

/** One state of a job: the wire form of a JobState (a websocket "state" frame). */
export interface JobState {
  type?: "state";
  job_id: string;
  status: "unknown" | "queued" | "started" | "finished" | "failed" | "aborted" | "expired";
  /** True for a terminal status: nothing more comes for the job. */
  completed: boolean;
  /** 0 to 1, or null when the job reports none. */
  progress: number | null;
  meta: Record<string, unknown> | null;
  error: string | null;
  attempt: number;
  /** Grows by one with every change; counts again from 1 after Redis lost the history. */
  seq: number;
  function: string | null;
  enqueued_at: string | null;
  started_at: string | null;
  finished_at: string | null;
  stalled: boolean;
  /**
   * The job's return value, in a finished state whose job side reports results
   * (report_result) and found it JSON-serialisable and small enough; else null.
   */
  result: unknown;
}

/** The answer to abort(): requested is false when the job had ended already. */
export interface AbortReply {
  type: "abort";
  job_id: string;
  requested: boolean;
}

/** A token, or a function (sync or async) returning one, called for every subscription. */
export type TokenSource = string | null | (() => string | null | Promise<string | null>);

/** What verify() follows. */
export interface Job {
  job_id: string;
  token?: TokenSource;
  /** The bridge's origin or the mount's URL; default: where the script was loaded from. */
  url?: string;
  /** The seq of the last state the page has: that state is not delivered again. */
  since_seq?: number;
  /** Milliseconds between two reads of /verify when polling. */
  pollInterval?: number;
  backoffMin?: number;
  backoffMax?: number;
  socketFailures?: number;
}

/** Callbacks, and the AbortSignal that cancels following. */
export interface Handlers {
  onProgress?: (progress: number, state: JobState) => void;
  onStatus?: (status: JobState["status"], state: JobState) => void;
  onState?: (state: JobState) => void;
  /** Aborting it closes the connection and rejects verify() with the signal's reason. */
  signal?: AbortSignal;
}

/** What feed() follows: every job enqueued with this owner. */
export interface Feed {
  owner: string;
  /** An owner token (tracker.owner_token(owner)); none when the app's authorize_owner decides. */
  token?: TokenSource;
  url?: string;
  backoffMin?: number;
  backoffMax?: number;
  socketFailures?: number;
}

/** The callback of feed(), and the AbortSignal that ends it. */
export interface FeedHandlers {
  /** Each state of any job of the owner: the snapshot's, then every change. */
  onState?: (state: JobState) => void;
  /** Aborting it closes the connection and rejects feed() with the signal's reason. */
  signal?: AbortSignal;
}

/** Why following cannot succeed; code is the server's error code (docs/protocol.md). */
export declare class ImmortusError extends Error {
  constructor(code: string, message: string);
  readonly name: "ImmortusError";
  /**
   * "token_invalid", "not_found", "job_lost", "origin_not_allowed", "create_failed",
   * "abort_disabled", "abort_failed", ...
   */
  readonly code: string;
}

/**
 * Follow a job until its terminal state: websocket first, then Server-Sent Events,
 * then polling. Resolves with the terminal state (a failed job too: look at
 * state.status); rejects with an ImmortusError on a refusal it cannot recover
 * from, or with signal.reason when the signal aborts.
 */
export declare function verify(job: Job, handlers?: Handlers): Promise<JobState>;

/**
 * Follow an owner's feed: its jobs now (at most 100), then each change of any of
 * them, jobs enqueued later included. Websocket first, then Server-Sent Events;
 * it reconnects with backoff and never settles by itself: it rejects with an
 * ImmortusError on a refusal ("not_found", "token_invalid", ...), or with
 * signal.reason when the signal aborts.
 */
export declare function feed(feed: Feed, handlers?: FeedHandlers): Promise<never>;

/**
 * Ask the server to abort the job (POST <url>/jobs/<job_id>/abort?token=...; the
 * server must allow aborts). Followers of the job then get its end. Rejects with
 * an ImmortusError: "abort_disabled", "not_found" (a job the caller may not see
 * answers so too), "abort_unsupported", "token_required", ...
 */
export declare function abort(
  job: Pick<Job, "job_id" | "token" | "url">,
  init?: RequestInit,
): Promise<AbortReply>;

/** POST data as JSON to the application's url; resolves to its { job_id, token }. */
export declare function create(
  url: string,
  data?: unknown,
  init?: RequestInit,
): Promise<{ job_id: string; token?: string } & Record<string, unknown>>;

export declare const defaults: {
  backoffMin: number;
  backoffMax: number;
  socketFailures: number;
  pollInterval: number;
};

declare const Immortus: {
  verify: typeof verify;
  feed: typeof feed;
  create: typeof create;
  abort: typeof abort;
  ImmortusError: typeof ImmortusError;
  defaults: typeof defaults;
  /** Where the client finds the server when a job has no url. */
  baseUrl: string | null;
};
export default Immortus;

declare global {
  interface Window {
    Immortus: typeof Immortus;
  }
}
