// A minimal ustar writer, so a checkpoint folder picked in the browser can be uploaded as the tar archive
// the API takes. Only the files the server keeps are packed; pickle weights are left out (it refuses them).

const KEPT = [/^config\.json$/, /\.safetensors$/, /^model\.safetensors\.index\.json$/, /^skillgraft_head\.json$/,
  /^tokenizer/, /^special_tokens_map\.json$/, /^vocab\.txt$/, /^vocab\.json$/, /^merges\.txt$/];

/** Whether the server keeps a checkpoint file of this name. */
export function kept(name) {
  return !name.startsWith('.') && KEPT.some((re) => re.test(name));
}

function header(name, size) {
  const b = new Uint8Array(512);
  const put = (offset, text) => {
    for (let i = 0; i < text.length; i++) b[offset + i] = text.charCodeAt(i) & 0xff;
  };
  const octal = (n, width) => n.toString(8).padStart(width - 1, '0');
  put(0, name.slice(0, 99));
  put(100, octal(0o644, 8));
  put(108, octal(0, 8));
  put(116, octal(0, 8));
  put(124, octal(size, 12));
  put(136, octal(Math.floor(Date.now() / 1000), 12));
  put(148, '        ');
  b[156] = '0'.charCodeAt(0);
  put(257, 'ustar\u000000');
  let sum = 0;
  for (const x of b) sum += x;
  put(148, `${octal(sum, 7)}\u0000 `);
  return b;
}

/** A tar archive (Blob) of files [{name, file}], names flattened to their last component. */
export function tar(files) {
  const parts = [];
  for (const { name, file } of files) {
    parts.push(header(name, file.size), file);
    const pad = (512 - (file.size % 512)) % 512;
    if (pad) parts.push(new Uint8Array(pad));
  }
  parts.push(new Uint8Array(1024));
  return new Blob(parts, { type: 'application/x-tar' });
}
