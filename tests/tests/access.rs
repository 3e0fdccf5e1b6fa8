//! Access control of the REST API (DESIGN "Access", issue 3 item 6), end to end: the real `csps`
//! and the real `teams-emulator` (Entra ID discovery, JWKS and token endpoint; Graph group
//! membership) as processes. The matrix {from localhost, from a network namespace over a veth
//! pair} × {no token, forged signature, expired, non-admin, admin, admin with the groups overage,
//! break-glass token} × {a config API, another API}, plus local requests with `X-Forwarded-For`
//! and with a foreign Host; Graph is asked once for the overage (then cached); the caller's UPN
//! reaches the audit log; `/api/debug/claims`; and a change of the admin app's client id applies
//! without a restart. And `/api/me/…`: only the end-user app's token opens it, for the user's own
//! accounts and phones only.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use csps_tests::emulator::{EmulatorOptions, TeamsEmulator};
use csps_tests::http::{self, Response};
use csps_tests::netns::NetNs;
use csps_tests::{Gateway, GatewayOptions, skip};
use serde_json::{Value, json};

const TENANT: &str = "5a1e7c1d-0000-4000-8000-00000000ad01";
const CLIENT_ID: &str = "c11e0001-0000-4000-8000-00000000ad02";
const CLIENT_SECRET: &str = "emulator-client-secret";
const ADMIN_GROUP: &str = "9a0f0000-0000-4000-8000-00000000ad03";
const OTHER_GROUP: &str = "9a0f0000-0000-4000-8000-0000000000ff";
const ADMIN_OID: &str = "0b1d0000-0000-4000-8000-000000000001";
const USER_OID: &str = "0b1d0000-0000-4000-8000-000000000002";
const OVERAGE_ADMIN_OID: &str = "0b1d0000-0000-4000-8000-000000000003";
const OVERAGE_USER_OID: &str = "0b1d0000-0000-4000-8000-000000000004";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Where a request comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    Localhost,
    Remote,
}

struct World {
    gw: Gateway,
    emu: TeamsEmulator,
    ns: NetNs,
    /// The gateway as reached from the namespace.
    remote_http: SocketAddr,
}

impl World {
    fn send(
        &self,
        from: Source,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let body = body.map(Value::to_string);
        match from {
            Source::Localhost => http::request(self.gw.http, method, path, token, body.as_deref())
                .unwrap_or_else(|e| panic!("{method} {path} from localhost: {e}")),
            Source::Remote => self
                .ns
                .curl(self.remote_http, method, path, token, &[], body.as_deref())
                .unwrap_or_else(|e| panic!("{method} {path} from the namespace: {e}")),
        }
    }
}

fn is_problem(r: &Response) -> bool {
    r.header("content-type") == Some("application/problem+json")
        && r.json()["status"] == json!(r.status)
}

/// Checks one answer: the status, a problem body for every error, a Bearer challenge on 401.
fn expect(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    if status >= 400 {
        assert!(
            is_problem(r),
            "{what}: not a problem: {:?} {}",
            r.headers,
            r.body
        );
    }
    if status == 401 {
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
    }
}

fn setup() -> Option<World> {
    let ns = match NetNs::create() {
        Ok(ns) => ns,
        Err(e) => {
            skip(&format!("cannot make a network namespace: {e}"));
            return None;
        }
    };
    let emu = TeamsEmulator::start_or_skip(&EmulatorOptions {
        tenant: TENANT.into(),
        clients: vec![(CLIENT_ID.into(), CLIENT_SECRET.into())],
        members: vec![
            (OVERAGE_ADMIN_OID.into(), OTHER_GROUP.into()),
            (OVERAGE_ADMIN_OID.into(), ADMIN_GROUP.into()),
            (OVERAGE_USER_OID.into(), OTHER_GROUP.into()),
        ],
        ..EmulatorOptions::default()
    })?;
    let gw = match Gateway::start_with(GatewayOptions {
        http_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
        ..GatewayOptions::default()
    }) {
        Ok(gw) => gw,
        Err(e) => {
            skip(&e);
            return None;
        }
    };
    let remote_http = SocketAddr::new(ns.host_ip.into(), gw.http.port());
    // Configure the admin app with the break-glass token, as a script on the server would.
    for (leaf, value) in [
        ("Tenant", json!(TENANT)),
        ("ClientId", json!(CLIENT_ID)),
        ("ClientSecret", json!(CLIENT_SECRET)),
        ("AdminGroupId", json!(ADMIN_GROUP)),
        ("Authority", json!(emu.base_url())),
        ("GraphUrl", json!(emu.base_url())),
    ] {
        gw.set_global(&format!("AdminAzureApp.{leaf}"), value);
    }
    Some(World {
        gw,
        emu,
        ns,
        remote_http,
    })
}

#[test]
fn access_matrix() {
    let Some(w) = setup() else { return };
    let user = |oid: &str, upn: &str, extra: Value| {
        let mut c = json!({"aud": CLIENT_ID, "oid": oid, "upn": upn, "sub": format!("sub-{oid}")});
        if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
            c.extend(extra);
        }
        c
    };
    let admin_claims = user(
        ADMIN_OID,
        "admin@contoso.test",
        json!({"groups": [OTHER_GROUP, ADMIN_GROUP]}),
    );
    let admin = w.emu.mint(admin_claims.clone(), false);
    let forged = w.emu.mint(admin_claims.clone(), true);
    let mut expired_claims = admin_claims.clone();
    expired_claims["exp"] = json!(now() - 600);
    let expired = w.emu.mint(expired_claims, false);
    let non_admin = w.emu.mint(
        user(
            USER_OID,
            "user@contoso.test",
            json!({"groups": [OTHER_GROUP]}),
        ),
        false,
    );
    let overage = w.emu.mint(
        user(
            OVERAGE_ADMIN_OID,
            "many-groups@contoso.test",
            json!({
                "_claim_names": {"groups": "src1"},
                "_claim_sources": {"src1": {"endpoint": "https://graph.windows.net/t/users/u/getMemberObjects"}},
            }),
        ),
        false,
    );
    let break_glass = w.gw.token.clone();

    // (credential, expected for the config API from localhost / remote, other API localhost / remote)
    let rows: [(&str, Option<&str>, [u16; 4]); 7] = [
        ("no token", None, [200, 401, 401, 401]),
        ("forged signature", Some(&forged), [401, 401, 401, 401]),
        ("expired", Some(&expired), [401, 401, 401, 401]),
        ("non-admin", Some(&non_admin), [403, 403, 403, 403]),
        ("admin", Some(&admin), [200, 200, 200, 200]),
        (
            "admin with groups overage",
            Some(&overage),
            [200, 200, 200, 200],
        ),
        (
            "break-glass token",
            Some(&break_glass),
            [200, 401, 200, 401],
        ),
    ];
    let apis = [
        ("config API", "/api/config/servers"),
        ("users API", "/api/users"),
    ];
    w.emu.clear_requests();
    for (cred, token, expected) in rows {
        let mut i = 0;
        for (api, path) in apis {
            for from in [Source::Localhost, Source::Remote] {
                let r = w.send(from, "GET", path, token, None);
                expect(&r, expected[i], &format!("{cred} × {from:?} × {api}"));
                if r.status == 200 {
                    assert!(r.json().is_array(), "{cred} × {from:?} × {api}: {}", r.body);
                }
                i += 1;
            }
        }
    }
    // The overage was resolved through Graph once (4 requests, 1 app token, 1 membership check).
    let tokens = w.emu.requests_to("/oauth2/v2.0/token");
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0]["body"]["grant_type"], "client_credentials");
    assert_eq!(tokens[0]["body"]["client_id"], CLIENT_ID);
    assert_eq!(
        tokens[0]["body"]["scope"],
        json!(format!("{}/.default", w.emu.base_url()))
    );
    let checks = w.emu.requests_to("/checkMemberGroups");
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(
        checks[0]["path"],
        json!(format!("/v1.0/users/{OVERAGE_ADMIN_OID}/checkMemberGroups"))
    );
    assert_eq!(checks[0]["body"], json!({"groupIds": [ADMIN_GROUP]}));
    assert_eq!(checks[0]["authorization"], "Bearer");

    // A user with the overage whom Graph does not put in the admin group is not an admin.
    let overage_user = w.emu.mint(
        user(
            OVERAGE_USER_OID,
            "many-groups-user@contoso.test",
            json!({"hasgroups": true}),
        ),
        false,
    );
    for from in [Source::Localhost, Source::Remote] {
        let r = w.send(from, "GET", "/api/users", Some(&overage_user), None);
        expect(&r, 403, &format!("overage non-admin × {from:?}"));
    }
    assert_eq!(w.emu.requests_to("/checkMemberGroups").len(), 2);

    // Local but relayed by a proxy, or for a foreign Host (DNS rebinding): no unauthenticated access.
    for (what, headers) in [
        ("X-Forwarded-For", vec![("X-Forwarded-For", "203.0.113.7")]),
        ("Forwarded", vec![("Forwarded", "for=203.0.113.7")]),
        ("foreign Host", vec![("Host", "csps.example.com")]),
    ] {
        let r = http::request_with_headers(
            w.gw.http,
            "GET",
            "/api/config/servers",
            None,
            &headers,
            None,
        )
        .expect("request");
        expect(&r, 401, &format!("localhost with {what}"));
        // ... while an admin token still works through a proxy.
        let r = http::request_with_headers(
            w.gw.http,
            "GET",
            "/api/config/servers",
            Some(&admin),
            &headers,
            None,
        )
        .expect("request");
        expect(&r, 200, &format!("admin token with {what}"));
    }

    // Open endpoints stay open from anywhere.
    for from in [Source::Localhost, Source::Remote] {
        expect(
            &w.send(from, "GET", "/api/version", None, None),
            200,
            "version",
        );
        expect(&w.send(from, "GET", "/healthz", None, None), 200, "healthz");
    }

    // The caller's identity reaches the audit log.
    let r = w.send(
        Source::Remote,
        "PUT",
        "/api/config/*/Data.SipConfig.Use8KHz",
        Some(&admin),
        Some(&json!(true)),
    );
    assert!(
        r.status < 300,
        "admin PUT from remote: {} {}",
        r.status,
        r.body
    );
    let r = w.send(
        Source::Remote,
        "PUT",
        "/api/config/*/Data.SipConfig.Use8KHz",
        Some(&non_admin),
        Some(&json!(false)),
    );
    expect(&r, 403, "non-admin PUT");
    let audit = w.gw.api("GET", "/api/audit?limit=20", None).json();
    let entry = audit
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e.to_string().contains("Use8KHz"))
        .unwrap_or_else(|| panic!("no audit entry for Use8KHz: {audit}"));
    assert_eq!(entry["actor"], "admin@contoso.test", "{entry}");

    // `/api/debug/claims`: any signed-in caller sees their own validated claims.
    let r = w.send(
        Source::Remote,
        "GET",
        "/api/debug/claims",
        Some(&non_admin),
        None,
    );
    expect(&r, 200, "claims of a non-admin");
    let c = r.json();
    assert_eq!(c["admin"], false, "{c}");
    assert_eq!(c["actor"], "user@contoso.test");
    assert_eq!(c["claims"]["oid"], USER_OID);
    assert_eq!(
        c["claims"]["iss"],
        json!(format!("{}/{TENANT}/v2.0", w.emu.base_url()))
    );
    let r = w.send(
        Source::Localhost,
        "GET",
        "/api/debug/claims",
        Some(&overage),
        None,
    );
    expect(&r, 200, "claims of an overage admin");
    assert_eq!(r.json()["admin"], true);
    let r = w.send(
        Source::Localhost,
        "GET",
        "/api/debug/claims",
        Some(&break_glass),
        None,
    );
    expect(&r, 200, "claims of the break-glass token");
    assert_eq!(r.json()["via"], "admin-token");
    assert_eq!(r.json()["claims"], Value::Null);
    expect(
        &w.send(Source::Localhost, "GET", "/api/debug/claims", None, None),
        401,
        "claims without a token",
    );
    expect(
        &w.send(
            Source::Remote,
            "GET",
            "/api/debug/claims",
            Some(&forged),
            None,
        ),
        401,
        "claims with a forged token",
    );

    // A new client id applies without a restart: the old audience is refused, then accepted again.
    let other_client = "c11e0001-0000-4000-8000-0000000000ee";
    let path = "/api/config/*/Data.AdminAzureApp.ClientId";
    let r = w.gw.api("PUT", path, Some(&json!(other_client)));
    assert!(r.status < 300, "PUT ClientId: {}", r.body);
    let r = w.send(Source::Remote, "GET", "/api/users", Some(&admin), None);
    expect(&r, 401, "admin token for the previous client id");
    let mut for_new = admin_claims.clone();
    for_new["aud"] = json!(format!("api://{other_client}"));
    let r = w.send(
        Source::Remote,
        "GET",
        "/api/users",
        Some(&w.emu.mint(for_new, false)),
        None,
    );
    expect(&r, 200, "admin token for api://<new client id>");
}

/// The end-user app (`Data.SpsAzureApp`) of the `/api/me` test: another client of the tenant.
const USER_CLIENT: &str = "c11e0001-0000-4000-8000-00000000ad04";

/// `/api/me/…` (DESIGN "Access"): only a token of the end-user app opens it, and it shows and
/// changes only the SIP accounts whose `upn` is the token's. Without a token, with the
/// break-glass token, a forged or expired token, or an admin-app token (another audience): 401.
/// With the user's token: their accounts (the UPN compared case-insensitively, `preferred_username`
/// when there is no `upn`), with their registered phone and not another user's; deactivation
/// changes their account only, under their name in the audit log (activation is the sign-in at
/// `/activate`; `POST /api/me/activation` is gone); their token opens no admin API.
/// When the same app registration serves both apps, an admin-app token is an end user's too.
#[test]
fn me_is_the_end_users_own_data_only() {
    if !csps_tests::have_tool("sipp") {
        return skip("sipp missing (run e2e/setup)");
    }
    let Some(emu) = TeamsEmulator::start_or_skip(&EmulatorOptions {
        tenant: TENANT.into(),
        clients: vec![(CLIENT_ID.into(), CLIENT_SECRET.into())],
        ..EmulatorOptions::default()
    }) else {
        return;
    };
    let Some(gw) = Gateway::start_or_skip() else {
        return;
    };
    let send = |method: &str, path: &str, token: Option<&str>| {
        http::request(gw.http, method, path, token, None)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    };
    let mint = |aud: &str, claims: Value| {
        let mut c = json!({"aud": aud, "oid": USER_OID, "sub": format!("sub-{aud}")});
        if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), claims) {
            c.extend(extra);
        }
        emu.mint(c, false)
    };
    let alice = mint(
        USER_CLIENT,
        json!({"upn": "alice@contoso.test", "name": "Alice"}),
    );

    // Not configured yet: nobody gets in.
    let r = send("GET", "/api/me", Some(&alice));
    expect(&r, 401, "end-user app not configured");
    assert!(r.body.contains("Data.SpsAzureApp"), "{}", r.body);

    let authority = emu.base_url();
    for (leaf, value) in [
        ("AdminAzureApp.Tenant", TENANT),
        ("AdminAzureApp.ClientId", CLIENT_ID),
        ("AdminAzureApp.AdminGroupId", ADMIN_GROUP),
        ("AdminAzureApp.Authority", authority.as_str()),
        ("SpsAzureApp.Tenant", TENANT),
        ("SpsAzureApp.ClientId", USER_CLIENT),
        ("SpsAzureApp.Authority", authority.as_str()),
    ] {
        gw.set_global(leaf, json!(value));
    }
    // alice's account (its UPN in another case), bob's, and both phones registered.
    let mut ids = std::collections::HashMap::new();
    for (user, upn) in [("alice", "Alice@Contoso.test"), ("bob", "bob@contoso.test")] {
        let r = gw.api(
            "POST",
            "/api/users",
            Some(&json!({"username": user, "password": format!("{user}-secret-1"), "upn": upn})),
        );
        assert_eq!(r.status, 201, "{user}: {}", r.body);
        ids.insert(user, r.json()["id"].as_str().unwrap_or("").to_owned());
        let reg = csps_tests::Sipp::new("register.xml", gw.sip_addr())
            .key("user", user)
            .key("domain", "csps.local")
            .key("expires", 300)
            .auth(user, &format!("{user}-secret-1"))
            .timeout(std::time::Duration::from_secs(10))
            .run();
        assert!(reg.ok(), "{user} did not register:\n{}", reg.output);
    }

    let admin = mint(
        CLIENT_ID,
        json!({"upn": "alice@contoso.test", "groups": [ADMIN_GROUP]}),
    );
    let expired = mint(
        USER_CLIENT,
        json!({"upn": "alice@contoso.test", "exp": now() - 600}),
    );
    let forged = emu.mint(
        json!({"aud": USER_CLIENT, "oid": USER_OID, "upn": "alice@contoso.test"}),
        true,
    );
    let no_name = mint(USER_CLIENT, json!({}));
    for (what, token) in [
        ("no token", None),
        ("break-glass token", Some(gw.token.as_str())),
        ("admin-app token", Some(admin.as_str())),
        ("expired", Some(expired.as_str())),
        ("forged", Some(forged.as_str())),
        ("a token naming no user", Some(no_name.as_str())),
    ] {
        for (method, path) in [("GET", "/api/me"), ("DELETE", "/api/me/activation")] {
            expect(
                &send(method, path, token),
                401,
                &format!("{what} × {method} {path}"),
            );
        }
    }

    // alice sees her account and her phone, nothing of bob's.
    let r = send("GET", "/api/me", Some(&alice));
    expect(&r, 200, "alice's token");
    let me = r.json();
    assert_eq!(me["upn"], "alice@contoso.test", "{me}");
    assert_eq!(me["name"], "Alice", "{me}");
    let accounts = me["accounts"].as_array().cloned().unwrap_or_default();
    assert_eq!(accounts.len(), 1, "{me}");
    let account = &accounts[0];
    assert_eq!(account["username"], "alice", "{me}");
    assert_eq!(account["activated"], false, "{me}");
    assert_eq!(account["registered"], true, "{me}");
    assert_eq!(account["devices"][0]["aor"], "sip:alice@csps.local", "{me}");
    assert_eq!(account["devices"][0]["user_agent"], "SIPp csps-e2e", "{me}");
    assert!(
        account.get("ha1").is_none() && account.get("password").is_none(),
        "{me}"
    );
    assert!(
        !r.body.contains("bob"),
        "bob's data in alice's answer: {}",
        r.body
    );
    // Her token is no admin-app token.
    expect(
        &send("GET", "/api/users", Some(&alice)),
        401,
        "alice's token on /api/users",
    );
    expect(
        &send("GET", "/api/registrations", Some(&alice)),
        401,
        "alice's token on /api/registrations",
    );

    // Activation is the server-side sign-in (tests/tests/activation.rs), not a POST here.
    expect(
        &send("POST", "/api/me/activation", Some(&alice)),
        405,
        "alice's POST /api/me/activation",
    );
    let state = |user: &str| {
        gw.api("GET", &format!("/api/users/{}", ids[user]), None)
            .json()["activated"]
            .clone()
    };
    // Deactivation changes her account only, under her name in the audit log.
    let r = gw.api(
        "PATCH",
        &format!("/api/users/{}", ids["alice"]),
        Some(&json!({"activated": true})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = gw.api(
        "PATCH",
        &format!("/api/users/{}", ids["bob"]),
        Some(&json!({"activated": true})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send("DELETE", "/api/me/activation", Some(&alice));
    expect(&r, 200, "alice deactivates");
    assert_eq!(r.json()["accounts"][0]["activated"], false, "{}", r.body);
    assert_eq!(state("alice"), json!(false));
    assert_eq!(state("bob"), json!(true));
    let audit = gw.api("GET", "/api/audit?limit=5", None).json();
    let entry = audit
        .as_array()
        .and_then(|l| l.iter().find(|e| e["action"] == "user.deactivate"))
        .cloned()
        .unwrap_or_else(|| panic!("no deactivation in the audit log: {audit}"));
    assert_eq!(entry["actor"], "alice@contoso.test", "{entry}");
    assert_eq!(
        entry["target"],
        json!(format!("user/{}", ids["alice"])),
        "{entry}"
    );

    // `preferred_username` names the user when there is no `upn`.
    let bob = mint(
        USER_CLIENT,
        json!({"preferred_username": "bob@contoso.test"}),
    );
    let r = send("GET", "/api/me", Some(&bob));
    expect(&r, 200, "bob by preferred_username");
    assert_eq!(r.json()["accounts"][0]["username"], "bob", "{}", r.body);
    assert!(
        !r.body.contains("alice"),
        "alice's data in bob's answer: {}",
        r.body
    );

    // A signed-in user without an account: nothing to show, nothing to activate.
    let carol = mint(USER_CLIENT, json!({"upn": "carol@contoso.test"}));
    let r = send("GET", "/api/me", Some(&carol));
    expect(&r, 200, "carol");
    assert_eq!(r.json()["accounts"], json!([]), "{}", r.body);
    expect(
        &send("DELETE", "/api/me/activation", Some(&carol)),
        404,
        "carol deactivates",
    );

    // One app registration for both: the admin-app token is then an end user's too.
    let r = gw.api(
        "PUT",
        "/api/config/*/Data.SpsAzureApp.ClientId",
        Some(&json!(CLIENT_ID)),
    );
    assert!(r.status < 300, "{}", r.body);
    let r = send("GET", "/api/me", Some(&admin));
    expect(&r, 200, "admin-app token when both apps are one");
    assert_eq!(r.json()["accounts"][0]["username"], "alice", "{}", r.body);
    expect(
        &send("GET", "/api/me", Some(&alice)),
        401,
        "the old end-user audience",
    );
}
