// The web chat's one DOM helper: `el("li", { class, "data-x": …, onclick }, ...children)`
// builds an element (class, data- attributes, properties; undefined ones left out) with
// its children.
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}
