/*
 * immortus.mjs: the ES module form of immortus.js (which it loads).
 *
 *   import Immortus, { verify, feed, create, abort } from "http://bridge.example:8765/immortus.mjs";
 */
import "./immortus.js";

const Immortus = globalThis.Immortus;
// Loaded from a module, immortus.js cannot see its own URL: tell it.
if (!Immortus.baseUrl) Immortus.baseUrl = new URL(".", import.meta.url).href;

export default Immortus;
export const { verify, feed, create, abort, ImmortusError, defaults } = Immortus;
