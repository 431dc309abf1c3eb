// The text chunks of a PNG (how our pictures say how they were made), read in the browser,
// and what "recall" restores from them.
const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

// tEXt (Latin-1) and uncompressed iTXt (UTF-8) chunks as { keyword: text }; {} for anything
// that is not a PNG. Compressed chunks are skipped: our PNGs never compress theirs.
export function pngText(buffer) {
  const bytes = new Uint8Array(buffer);
  const text = {};
  if (bytes.length < 8 || SIGNATURE.some((value, i) => bytes[i] !== value)) return text;
  const view = new DataView(buffer);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  for (let at = 8; at + 12 <= bytes.length;) {
    const length = view.getUint32(at);
    const type = latin1.decode(bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, Math.min(at + 8 + length, bytes.length));
    const nul = data.indexOf(0);
    if (type === "tEXt" && nul > 0) {
      text[latin1.decode(data.subarray(0, nul))] = latin1.decode(data.subarray(nul + 1));
    } else if (type === "iTXt" && nul > 0 && data[nul + 1] === 0) {
      // keyword \0 flag method language \0 translated keyword \0 text
      const language = data.indexOf(0, nul + 3);
      const translated = language < 0 ? -1 : data.indexOf(0, language + 1);
      if (translated >= 0) text[latin1.decode(data.subarray(0, nul))] = utf8.decode(data.subarray(translated + 1));
    }
    if (type === "IEND") break;
    at += 12 + length;
  }
  return text;
}

// The form values a PNG of ours was made with (field name → string), or null when the
// picture is not one of ours.
export function recalledSettings(text) {
  if (text.software !== "dalle-playground" || typeof text.prompt !== "string") return null;
  const values = { text: text.prompt, seed: text.seed };
  if (text.model) values.model = text.model;
  const fields = { gen_top_k: text.gen_top_k, gen_top_p: text.gen_top_p,
                   temperature: text.temperature, condition_scale: text.condition_scale };
  for (const [name, value] of Object.entries(fields)) {
    if (value !== undefined && value !== "None") values[name] = value;
  }
  return values;
}
