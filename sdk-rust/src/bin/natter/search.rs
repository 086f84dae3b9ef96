//! `natter search …`, `natter find-users`, `natter find-channels` and `natter unlisted`
//! (PROTOCOL.md §14.3–14.4): one JSON line per hit, user or channel (the JS package's
//! shapes), then a closing line with the page's cursor, total and index lag.
use clap::{Args, ValueEnum};
use natter_protocol::client::model::{self, SearchResults};
use natter_sdk::{proto as pb, Client};
use serde_json::json;

use super::{print, print_record};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OrderArg {
    Recent,
    Relevant,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Words, "phrases", -excluded, from:NAME, in:NAME, has:file|image|link,
    /// after:/before:YYYY-MM-DD.
    #[arg(required = true, num_args = 1..)]
    query: Vec<String>,
    /// Only this conversation (repeat for several; default all of yours).
    #[arg(long = "in-conversation")]
    conversations: Vec<u64>,
    /// newest first (recent) or best match first (relevant).
    #[arg(long, value_enum, default_value = "recent")]
    order: OrderArg,
    /// Hits per page (1..=100).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Continue from a page's nextCursor.
    #[arg(long, default_value = "")]
    cursor: String,
}

pub async fn search(a: SearchArgs, client: &Client) -> anyhow::Result<()> {
    let order = match a.order {
        OrderArg::Recent => pb::SearchOrder::Recent,
        OrderArg::Relevant => pb::SearchOrder::Relevant,
    };
    let r = client
        .search(pb::Search {
            query: a.query.join(" "),
            conversation_ids: a.conversations,
            order: order as i32,
            limit: a.limit,
            cursor: a.cursor,
            ..Default::default()
        })
        .await?;
    let r = SearchResults::from(r);
    for h in &r.hits {
        print_record(h);
    }
    print(json!({
        "nextCursor": r.next_cursor,
        "total": r.total,
        "indexLagMs": r.index_lag_ms,
        "encryptedConversationIds": r.encrypted_conversation_ids,
    }));
    Ok(())
}

pub async fn users(prefix: &str, limit: u32, client: &Client) -> anyhow::Result<()> {
    for u in client.search_users(prefix, limit).await? {
        print_record(&model::UserMatch::from(u));
    }
    Ok(())
}

pub async fn channels(prefix: &str, limit: u32, client: &Client) -> anyhow::Result<()> {
    for c in client.search_channels(prefix, limit).await? {
        print_record(&model::ChannelMatch::from(c));
    }
    Ok(())
}
