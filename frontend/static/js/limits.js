// The server's limits of a request (GET /limits, from playground/limits.py), with those of the
// models now served: the pages check a request as the server will, and write none of them.
import { getLimits } from "./api.js";

export const limits = await getLimits();
