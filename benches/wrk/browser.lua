-- wrk: every request a GET with the fields a browser's API call carries (seven besides `Host`),
-- so a proxy parses, checks and forwards a realistic head rather than a bare one.
-- Used by scripts/peer-bench.sh with WRK_SCRIPT=benches/wrk/browser.lua.
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
wrk.headers["Accept"] = "application/json, text/plain, */*"
wrk.headers["Accept-Encoding"] = "gzip, deflate, br"
wrk.headers["Accept-Language"] = "en-US,en;q=0.9"
wrk.headers["Cookie"] = "session=4f2a9c1e7b3d8e6a5c0f1b2d3e4f5a6b; theme=dark"
wrk.headers["Referer"] = "https://app.example.com/dashboard"
wrk.headers["Sec-Fetch-Mode"] = "cors"
