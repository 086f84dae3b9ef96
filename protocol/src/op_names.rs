//! A request's kind as a short stable name: the field name of its `Request.op` case in
//! `spec/natter.proto` ("send", "history", "create_group", …). Logs and the server's
//! metrics label requests with it (a closed set: one name per kind, never request data).
use crate::pb::request::Op;

impl Op {
    /// The kind of request, as its field name in `Request.op`.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Register(_) => "register",
            Op::Login(_) => "login",
            Op::Authenticate(_) => "authenticate",
            Op::Logout(_) => "logout",
            Op::ListDevices(_) => "list_devices",
            Op::CreateDirect(_) => "create_direct",
            Op::CreateGroup(_) => "create_group",
            Op::CreateChannel(_) => "create_channel",
            Op::JoinChannel(_) => "join_channel",
            Op::AddMembers(_) => "add_members",
            Op::RemoveMember(_) => "remove_member",
            Op::Leave(_) => "leave",
            Op::Rename(_) => "rename",
            Op::DeleteConversation(_) => "delete_conversation",
            Op::SetRole(_) => "set_role",
            Op::ListConversations(_) => "list_conversations",
            Op::GetMembers(_) => "get_members",
            Op::Send(_) => "send",
            Op::History(_) => "history",
            Op::MarkRead(_) => "mark_read",
            Op::Ping(_) => "ping",
            Op::Edit(_) => "edit",
            Op::DeleteMessage(_) => "delete_message",
            Op::React(_) => "react",
            Op::MarkDelivered(_) => "mark_delivered",
            Op::GetReceipts(_) => "get_receipts",
            Op::Heartbeat(_) => "heartbeat",
            Op::SetPrivacy(_) => "set_privacy",
            Op::GetPresence(_) => "get_presence",
            Op::Typing(_) => "typing",
            Op::CreateUpload(_) => "create_upload",
            Op::GetUpload(_) => "get_upload",
            Op::CancelUpload(_) => "cancel_upload",
            Op::Download(_) => "download",
            Op::GetMedia(_) => "get_media",
            Op::MediaUrl(_) => "media_url",
            Op::UploadKeys(_) => "upload_keys",
            Op::ClaimKeys(_) => "claim_keys",
            Op::GetDeviceKeys(_) => "get_device_keys",
            Op::CreateKeyBackup(_) => "create_key_backup",
            Op::GetKeyBackup(_) => "get_key_backup",
            Op::PutBackupKeys(_) => "put_backup_keys",
            Op::GetBackupKeys(_) => "get_backup_keys",
            Op::SendToDevice(_) => "send_to_device",
            Op::PublishUserKey(_) => "publish_user_key",
            Op::SignDevice(_) => "sign_device",
            Op::RegisterPush(_) => "register_push",
            Op::ListPush(_) => "list_push",
            Op::RemovePush(_) => "remove_push",
            Op::GetNotifySettings(_) => "get_notify_settings",
            Op::SetNotifySettings(_) => "set_notify_settings",
            Op::Search(_) => "search",
            Op::SearchUsers(_) => "search_users",
            Op::SearchChannels(_) => "search_channels",
            Op::SetUnlisted(_) => "set_unlisted",
            Op::TokenLogin(_) => "token_login",
            Op::RefreshToken(_) => "refresh_token",
            Op::Moderate(_) => "moderate",
            Op::SetSlowMode(_) => "set_slow_mode",
            Op::ReportMessage(_) => "report_message",
            Op::SetProfile(_) => "set_profile",
            Op::GetProfiles(_) => "get_profiles",
            Op::DeleteAccount(_) => "delete_account",
            Op::ExportAccount(_) => "export_account",
            Op::SetRetention(_) => "set_retention",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn names_are_the_proto_field_names() {
        assert_eq!(Op::Send(pb::SendMessage::default()).name(), "send");
        assert_eq!(Op::History(pb::GetHistory::default()).name(), "history");
        assert_eq!(Op::ExportAccount(pb::ExportAccount::default()).name(), "export_account");
    }
}
