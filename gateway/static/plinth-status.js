// Re-renders the status page from /status.json every few seconds (no external resources).
"use strict";

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function badge(value, extra) {
  return el("span", { class: "badge " + value + (extra ? " " + extra : "") }, value);
}

function overallText(data) {
  if (data.status === "ok") return "All routed services have a passing instance.";
  if (data.status === "no registry") return "No service registry configured: the gateway routes without one.";
  if (data.registry.degraded) return "Degraded: the service registry is unreachable; the gateway routes blindly.";
  return "Degraded: a service has no passing instance or an open circuit breaker.";
}

function render(data) {
  const overall = document.getElementById("overall");
  overall.className = "overall " + data.status.replace(" ", "-");
  overall.dataset.status = data.status;
  overall.textContent = overallText(data);
  const registry = document.getElementById("registry");
  const reg = data.registry;
  registry.dataset.reachable = String(reg.reachable).toLowerCase();
  registry.textContent = (reg.address || "none") + " — " + (reg.reachable ? "reachable"
    : reg.enabled ? "unreachable" + (reg.last_error ? " (" + reg.last_error + ")" : "") : "disabled");
  document.getElementById("broker").textContent = data.gateway.broker_connected ? "connected" : "disconnected";
  document.getElementById("generated").textContent = data.generated_at;

  const main = document.getElementById("services");
  main.replaceChildren();
  for (const [name, svc] of Object.entries(data.services)) {
    const section = el("section", { class: "service", "data-service": name, "data-health": svc.health });
    const title = el("h2", {}, name + " ");
    title.append(badge(svc.health), el("span", { class: "counts" }, svc.passing + "/" + svc.total + " passing"));
    const breaker = badge(svc.breaker.state, "breaker");
    breaker.textContent = "breaker " + svc.breaker.state;
    breaker.dataset.breaker = svc.breaker.state;
    title.append(breaker);
    section.append(title);
    if (svc.instances.length) {
      const table = el("table");
      const head = el("tr");
      for (const h of ["instance", "address", "check", "since", "version", "output"]) head.append(el("th", {}, h));
      const thead = el("thead");
      thead.append(head);
      table.append(thead);
      const body = el("tbody");
      for (const inst of svc.instances) {
        const row = el("tr", { class: "instance", "data-instance": inst.id, "data-status": inst.status });
        const check = el("td");
        check.append(badge(inst.status));
        row.append(el("td", {}, inst.id), el("td", {}, inst.address + ":" + inst.port), check,
          el("td", {}, inst.age_s + " s ago"), el("td", {}, inst.version || ""),
          el("td", { class: "output" }, inst.output || ""));
        body.append(row);
      }
      table.append(body);
      section.append(table);
    } else {
      section.append(el("p", { class: "empty" }, "No registered instance" + (svc.error ? " (" + svc.error + ")" : "") + "."));
    }
    main.append(section);
  }
}

async function refresh() {
  try {
    const response = await fetch("/status.json", { cache: "no-store" });
    if (response.ok) render(await response.json());
  } catch (error) {
    document.getElementById("generated").textContent = "unreachable (" + error + ")";
  }
}

setInterval(refresh, 3000);
