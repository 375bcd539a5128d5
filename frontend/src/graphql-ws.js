// graphql-ws's browser client as one ES module, for the demo page (and your own pages).
export { createClient } from "graphql-ws";
