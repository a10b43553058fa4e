// Drives headless Chromium through the live status pages: a job appears on an open dashboard and
// moves PENDING -> BUILDING -> READY, and its log lines stream into an open job page, with no
// reload. Called by tests/live_page.rs with STATUS, HOOK_A, HOOK_B (two hooks of one project, so
// the second job waits PENDING while the first builds), GATES (a folder: a build ends when the
// file named after its job id appears there) and CHROMIUM (the browser's path).
"use strict";
const { chromium } = require("playwright-core");
const fs = require("fs");
const path = require("path");

const env = process.env;
const say = (line) => console.log(line);

async function trigger(url) {
  const r = await fetch(url, { method: "POST" });
  if (r.status !== 201) throw new Error("trigger answered " + r.status);
  return (await r.json()).job.id;
}

(async () => {
  const browser = await chromium.launch({
    executablePath: env.CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
      "--no-first-run", "--disable-background-networking", "--disable-component-update",
      "--disable-sync"],
  });
  try {
    const page = await browser.newPage();
    const t0 = Date.now();
    const nav = await page.goto(env.STATUS + "/", { waitUntil: "load" });
    say("dashboard bytes " + (await nav.body()).length + " load ms " + (Date.now() - t0));
    await page.evaluate(() => { window.notReloaded = true; });
    const timeout = { timeout: 20000 };

    const a = await trigger(env.HOOK_A);
    await page.waitForSelector(`#job-${a} .state.BUILDING`, timeout);
    const b = await trigger(env.HOOK_B);
    await page.waitForSelector(`#job-${b} .state.PENDING`, timeout);
    say("pending shown");

    const jobPage = await browser.newPage();
    await jobPage.goto(env.STATUS + "/job/" + b, { waitUntil: "load" });
    await jobPage.evaluate(() => { window.notReloaded = true; });

    fs.writeFileSync(path.join(env.GATES, a), "");
    await page.waitForSelector(`#job-${b} .state.BUILDING`, timeout);
    say("building shown");
    await jobPage.waitForFunction(
      () => document.getElementById("log").textContent.includes("first line of the build"),
      null, timeout);
    say("log streamed");

    fs.writeFileSync(path.join(env.GATES, b), "");
    await page.waitForSelector(`#job-${b} .state.READY`, timeout);
    say("ready shown");
    await jobPage.waitForFunction(
      () => document.getElementById("log").textContent.includes("last line of the build"),
      null, timeout);
    await jobPage.waitForSelector("h1 .state.READY", timeout);
    say("job page ready");

    const kept = await page.evaluate(() => window.notReloaded === true)
      && await jobPage.evaluate(() => window.notReloaded === true);
    say(kept ? "no reload" : "RELOADED");
    await page.waitForSelector(`#project-site svg.chart rect.READY`, timeout);
    say("chart shown");
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
