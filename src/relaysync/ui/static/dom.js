// DOM helpers. Every value from the API goes into the page as text (text nodes, textContent,
// properties): never as HTML. File names and URLs are chosen by whoever writes on a source.

const PROPERTIES = new Set(["className", "title", "disabled", "type", "value", "hidden", "max"]);

// el("td", {className: "lag"}, "3") -> <td class="lag">3</td>; children are nodes or text.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "onclick") node.addEventListener("click", value);
    else if (PROPERTIES.has(key)) node[key] = value;
    else throw new Error(`el: property ${key} is not allowed`);
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function byId(id) {
  return document.getElementById(id);
}

export function setText(id, text) {
  byId(id).textContent = text;
}

// A table: headings, then rows (<tr> nodes).
export function table(headings, rows, className = "") {
  const head = el("tr", {}, headings.map((h) => el("th", {}, h)));
  return el("table", { className }, el("thead", {}, head), el("tbody", {}, rows));
}

export function cell(content, className = "") {
  return el("td", { className }, content);
}

export function when(unix) {
  if (unix === null || unix === undefined) return "never";
  return new Date(unix * 1000).toLocaleString();
}

export function ago(unix) {
  if (unix === null || unix === undefined) return "never";
  const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return when(unix);
}

export function showError(id, message) {
  const node = byId(id);
  node.textContent = message;
  node.hidden = !message;
}

// An action button: disabled with a tooltip for a read token; errors of `run` go to the banner.
export function actionButton(label, { admin, run, className = "", dataset = {} }) {
  const tip = admin ? "" : "Needs an admin token: this token has scope 'read'";
  const button = el("button", { type: "button", className, disabled: !admin, title: tip, dataset }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await run();
    } catch (err) {
      showError("banner", err.message);
    } finally {
      button.disabled = !admin;
    }
  });
  // a disabled button gets no pointer events in some browsers: the wrapper shows the tooltip
  return el("span", { title: tip, className: "action" }, button);
}

// The confirm dialog; resolves true when the operator confirms.
export function confirmDialog(title, text, okLabel) {
  const dialog = byId("confirm-dialog");
  setText("confirm-title", title);
  setText("confirm-text", text);
  setText("confirm-ok", okLabel);
  return new Promise((resolve) => {
    const done = (answer) => {
      byId("confirm-ok").removeEventListener("click", ok);
      byId("confirm-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("cancel", cancel);
      dialog.close();
      resolve(answer);
    };
    const ok = () => done(true);
    const cancel = () => done(false);
    byId("confirm-ok").addEventListener("click", ok);
    byId("confirm-cancel").addEventListener("click", cancel);
    dialog.addEventListener("cancel", cancel);
    dialog.showModal();
  });
}
