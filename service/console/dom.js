// Small DOM helpers shared by the console's panels: element building, the message line, number formatting.

export function $(selector, root = document) {
  return root.querySelector(selector);
}

// el("td", {className: "num"}, "0.87"): an element with properties set and children (strings become text).
export function el(tag, properties = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(properties)) {
    if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element[name] = value;
  }
  element.append(...children.filter((child) => child !== null && child !== undefined));
  return element;
}

export function row(...cells) {
  return el("tr", {}, ...cells.map((cell) => (cell instanceof Node ? el("td", {}, cell) : el("td", {}, String(cell)))));
}

let messageTimer = null;

// Show what went wrong (the service's `detail`); a 401 shows the key prompt instead.
export function report(error) {
  if (error && error.name === "AbortError") return;
  if (error && error.status === 401) return;
  const text = error instanceof Error ? error.message : String(error);
  const box = $("#message");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(messageTimer);
  messageTimer = setTimeout(() => {
    box.hidden = true;
  }, 10000);
}

export function fixed(value, digits = 2) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

export function boxText(box) {
  return box.map((value) => value.toFixed(1)).join(", ");
}

export function sleep(ms) {
  return new Promise((resolve) => {
    setTimeout(resolve, ms);
  });
}
