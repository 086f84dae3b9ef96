//! Internal failures as clients see them. A storage or task failure is logged in full with
//! a fresh incident id, and the client's error carries only that id, never backend text
//! (which can name hosts, paths or data). Beside the layers: imports none of them.
use natter_protocol::pb::ErrorCode;
use natter_protocol::ServerError;

/// Log `e` under a new incident id and return the `INTERNAL` error that names only the id.
pub fn internal(e: &dyn std::fmt::Display) -> ServerError {
    let incident = format!("{:016x}", rand::random::<u64>());
    tracing::error!(%incident, error = %e, "internal error");
    ServerError::new(ErrorCode::Internal, format!("internal error (incident {incident})"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_client_sees_an_incident_id_not_the_cause() {
        let e = super::internal(&"redis at 10.1.2.3:6379 refused AUTH for user admin");
        assert_eq!(e.code, natter_protocol::pb::ErrorCode::Internal);
        assert!(
            !e.message.contains("10.1.2.3") && !e.message.contains("admin"),
            "{}",
            e.message
        );
        assert!(e.message.contains("incident"), "{}", e.message);
    }
}
