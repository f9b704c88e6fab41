//! `GET /admin/jobs`: the job board behind `server.admin_token`, on both queue backends.

use reqwest::StatusCode;

use crate::helpers::*;

async fn get(base: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = reqwest::Client::new().get(format!("{base}/admin/jobs"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

async fn job_board_needs_the_admin_token_and_shows_queues_and_dead_jobs(backend: Backend) {
    let env = TestEnv::new(backend).await;
    // Test apps run with `helpers::ADMIN_TOKEN` as `server.admin_token`.
    let app = env.spawn_app(ALL_ROLES).await;
    let payload = r#"{"kind":"apply_notification","inbox_id":42}"#;
    // The board is about dead jobs: this one stays for the page to show.
    app.expect_dead_jobs();
    let id = app
        .state
        .db
        .insert_dead_job(
            wxpay_recon::domain::JobKind::ApplyNotification,
            payload,
            8,
            "database: <locked> & gone",
            env.clock.now_ms(),
        )
        .await
        .unwrap();

    assert_eq!(get(&app.base, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&app.base, Some("not-the-token")).await.0, StatusCode::UNAUTHORIZED);

    let (status, page) = get(&app.base, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("<h1>Dead jobs (1)</h1>"), "{page}");
    assert!(page.contains(&format!("<tr><td>{id}</td><td>apply_notification</td><td>8</td>")), "{page}");
    assert!(page.contains("database: &lt;locked&gt; &amp; gone"), "the last error, escaped: {page}");
    assert!(page.contains("&quot;inbox_id&quot;:42"), "{page}");
    for queue in ["apply", "poll"] {
        assert!(page.contains(&format!("<h2>{}.{queue}</h2>", env.prefix)), "{page}");
    }
    assert!(!page.contains("unavailable"), "apalis reports per-queue statistics on this backend: {page}");
    assert!(page.contains("PENDING_JOBS") || page.contains("pending"), "{page}");
}

/// Once jobs have finished, the queue statistics still read (on Redis apalis keeps finished ids
/// in plain sets: counting them as sorted sets failed with WRONGTYPE and blinded the board and
/// the `wxpay_queue_jobs` gauge after the first payment).
async fn queue_statistics_read_after_jobs_finish(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app(ALL_ROLES).await;
    // Notifications are applied from the inbox, not through the queue: a deferred entry's job is
    // what finishes on the apply queue (this one names no entry, so it finishes at once).
    let job = wxpay_recon::queue::Envelope::first(wxpay_recon::queue::Job::ApplyNotification { inbox_id: i64::MAX });
    app.state.queue.push(job, None).await.unwrap();
    eventually("the apply job is counted done", std::time::Duration::from_secs(20), || async {
        let apply = format!("{}.apply", env.prefix);
        app.state.operations.queues().await.into_iter().any(|q| {
            q.name == apply
                && q.stats.as_ref().is_ok_and(|stats| {
                    stats.iter().any(|s| s.title == "DONE_JOBS" && s.value.trim().parse::<f64>().unwrap_or(0.0) >= 1.0)
                })
        })
    })
    .await;
    for queue in app.state.operations.queues().await {
        assert!(queue.stats.is_ok(), "{}: {:?}", queue.name, queue.stats);
    }
    let (status, page) = get(&app.base, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!page.contains("unavailable"), "{page}");
}

async fn job_board_is_refused_without_a_configured_token(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app_with(ALL_ROLES, |s| s.server.admin_token = None).await;
    assert_eq!(get(&app.base, Some(ADMIN_TOKEN)).await.0, StatusCode::FORBIDDEN);
}

crate::both_profiles!(
    queue_statistics_read_after_jobs_finish,
    job_board_needs_the_admin_token_and_shows_queues_and_dead_jobs,
    job_board_is_refused_without_a_configured_token
);
