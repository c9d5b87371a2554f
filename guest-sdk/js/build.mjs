// Builds a JavaScript plugin into a component with componentize-js; run by
// `weir plugin build` (which installs the toolchain and stages the plugin):
//
//     node build.mjs TOOLCHAIN ENTRY WIT WORLD OUTPUT
//
// in the staged directory, where ENTRY (the entry module) and the SDK
// (`weir.js`) sit next to the plugin's modules. TOOLCHAIN is the directory
// whose node_modules holds componentize-js. The component imports only what
// the WIT world and the SpiderMonkey runtime's stdio, clocks and random need:
// no HTTP.

import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [toolchain, entry, wit, world, output] = process.argv.slice(2);
if (!output) {
  console.error("usage: node build.mjs TOOLCHAIN ENTRY WIT WORLD OUTPUT");
  process.exit(2);
}

const module = join(toolchain, "node_modules/@bytecodealliance/componentize-js/src/componentize.js");
const { componentize } = await import(pathToFileURL(module).href);

try {
  const { component } = await componentize({
    sourcePath: entry,
    witPath: wit,
    worldName: world,
    disableFeatures: ["http", "fetch-event"],
  });
  await writeFile(output, component);
} catch (error) {
  console.error(String(error?.message ?? error).trim());
  process.exit(1);
}
