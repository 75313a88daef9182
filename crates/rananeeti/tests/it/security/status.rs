//! Issue 12.1: `GET /api/commands/{id}` answered anyone with the whole payload. A sign-up's id is
//! a digest of its email, so whoever knew an address read its password hash; cart and checkout
//! payloads went to strangers the same way.

use super::{client, send, shopper};
use crate::regions::start_up;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn reading_password_hashes_and_others_carts_by_command_id_is_refused() {
    let up = start_up(1, 1, "sqlite").await;
    let base = up.topology.gateway_url.clone().unwrap();
    let status_of = |id: &str, token: Option<&str>| {
        let mut request = client().get(format!("{base}/api/commands/{id}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        send(request)
    };

    let (signup, ann) = shopper(&base, "ann@example.com").await;
    let (_, bob) = shopper(&base, "bob@example.com").await;
    let signup_id = signup["id"].as_str().unwrap().to_string();

    // A stranger, and another shopper, learn nothing: not even that the account exists.
    assert_eq!(status_of(&signup_id, None).await.status, 404, "a stranger reading a sign-up by its id");
    assert_eq!(status_of(&signup_id, Some(&bob)).await.status, 404, "another shopper reading Ann's sign-up");
    // Ann sees where her sign-up stands, without the payload.
    let own = status_of(&signup_id, Some(&ann)).await;
    assert_eq!((own.status, own.body["status"].as_str()), (200, Some("committed")), "{}", own.body);
    assert!(own.body.get("payload").is_none(), "no payload but for the admin: {}", own.body);
    // The admin sees the payload, and still no password hash: it is stripped at the source.
    let admin = status_of(&signup_id, Some(&up.token)).await;
    assert_eq!(admin.status, 200);
    assert_eq!(admin.body["payload"]["email"], "ann@example.com", "{}", admin.body);
    assert!(!admin.body.to_string().contains("argon2"), "a password hash in an admin answer: {}", admin.body);

    // Ann's cart line and her order: hers only.
    let added =
        send(client().post(format!("{base}/api/cart")).bearer_auth(&ann).json(&json!({ "book_id": "emma" }))).await;
    assert_eq!(added.status, 201, "{}", added.body);
    let order = send(client().post(format!("{base}/api/orders")).bearer_auth(&ann)).await;
    assert_eq!(order.status, 201, "{}", order.body);
    for (what, id) in [("cart line", added.body["id"].as_str().unwrap()), ("order", order.body["id"].as_str().unwrap())]
    {
        assert_eq!(status_of(id, None).await.status, 404, "a stranger reading Ann's {what}");
        assert_eq!(status_of(id, Some(&bob)).await.status, 404, "Bob reading Ann's {what}");
        let own = status_of(id, Some(&ann)).await;
        assert_eq!(own.status, 200, "Ann reading her {what}: {}", own.body);
        assert!(own.body.get("payload").is_none(), "{}", own.body);
    }

    // A booking's id is the reference its guest was given: its holder sees where it stands, not
    // what it says.
    let booking =
        send(client().post(format!("{base}/api/cafe/reservations")).json(&crate::support::reservation("status", 1)))
            .await;
    let booked = status_of(booking.body["id"].as_str().unwrap(), None).await;
    assert_eq!((booked.status, booked.body["status"].as_str()), (200, Some("committed")), "{}", booked.body);
    assert!(booked.body.get("payload").is_none(), "{}", booked.body);
}
