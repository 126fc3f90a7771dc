//! HTTP test helpers for the example server's suites: the configuration most of them start
//! from, and GETs that panic with the URL when the server does not answer.

/// A configuration with a default of `default_limit` requests a minute and a rule `hello` on
/// `/api/hello` of `hello_limit` a minute (policy `hello-1m`). More of the `rate_limiter` block
/// (two-space indented keys such as `  cache:`) can be appended to it.
///
/// ```
/// let yaml = ratelimit_tests::hello_rule_config(100, 3);
/// assert!(yaml.contains("max_requests: 3"));
/// ```
pub fn hello_rule_config(default_limit: u64, hello_limit: u64) -> String {
    format!(
        "rate_limiter:
  windows:
    - max_requests: {default_limit}
      duration: 1m
  rules:
    - name: hello
      match:
        path: /api/hello
      windows:
        - max_requests: {hello_limit}
          duration: 1m
"
    )
}

/// `GET url` with `client`; panics (naming the URL) if no response comes back. Any status is
/// returned: asserting it is the test's business.
///
/// ```no_run
/// # async fn example() {
/// let client = reqwest::Client::new();
/// let response = ratelimit_tests::http_get(&client, "http://127.0.0.1:8080/api/hello").await;
/// assert_eq!(response.status(), 200);
/// # }
/// ```
pub async fn http_get(client: &reqwest::Client, url: impl AsRef<str>) -> reqwest::Response {
    let url = url.as_ref();
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// [`http_get`], then the body as JSON; panics (naming the URL) if it is not JSON.
pub async fn http_json(client: &reqwest::Client, url: impl AsRef<str>) -> serde_json::Value {
    let text = http_text(client, url.as_ref()).await;
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {}: the body is not JSON: {e}\n{text}", url.as_ref()))
}

/// [`http_get`], then the body as text.
pub async fn http_text(client: &reqwest::Client, url: impl AsRef<str>) -> String {
    let url = url.as_ref();
    let response = http_get(client, url).await;
    let body = response.text().await;
    body.unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}"))
}
