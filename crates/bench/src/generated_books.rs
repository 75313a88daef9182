//! A large catalog for the bookstore scenario: generated books whose titles are made of common
//! words, so a one-word search matches some books but not most, inserted straight into a
//! region's `bs_books` in batches within one transaction.

use anyhow::Context;
use rananeeti_platform::StoreKind;
use sqlx::AnyPool;

/// Rows per INSERT statement (12 bound values each): sqlx's SQLite driver slows down more than
/// linearly with the values of one statement (1,000 rows per statement took 5x as long).
const INSERT_BATCH_ROWS: usize = 100;
/// Stock of every generated book (and of the seed's, raised before the checkout mix), so no
/// checkout is refused for stock: the benchmark measures the write path, not sold-out books.
pub const CHECKOUT_STOCK: i64 = 1_000_000;
/// SQLite page cache of the bulk insert's connection, KiB.
const SQLITE_CACHE_KIB: u64 = 256 * 1024;

/// Title words a search is made of (each in roughly 1 to 2% of the generated titles).
pub const ADJECTIVES: [&str; 48] = [
    "silent",
    "golden",
    "hidden",
    "broken",
    "forgotten",
    "distant",
    "crimson",
    "winter",
    "summer",
    "secret",
    "burning",
    "frozen",
    "gentle",
    "bitter",
    "quiet",
    "lonely",
    "ancient",
    "northern",
    "southern",
    "eastern",
    "western",
    "hollow",
    "silver",
    "scarlet",
    "wandering",
    "sleeping",
    "restless",
    "fallen",
    "painted",
    "shining",
    "drowned",
    "lost",
    "last",
    "first",
    "little",
    "dark",
    "bright",
    "endless",
    "narrow",
    "velvet",
    "iron",
    "glass",
    "paper",
    "stone",
    "midnight",
    "autumn",
    "savage",
    "tender",
];
pub const NOUNS: [&str; 72] = [
    "river",
    "garden",
    "harbor",
    "mountain",
    "lantern",
    "orchard",
    "island",
    "kingdom",
    "letter",
    "mirror",
    "voyage",
    "shadow",
    "meadow",
    "thunder",
    "compass",
    "forest",
    "castle",
    "daughter",
    "brother",
    "sister",
    "captain",
    "widow",
    "soldier",
    "stranger",
    "orphan",
    "empire",
    "village",
    "city",
    "desert",
    "ocean",
    "storm",
    "winter",
    "lighthouse",
    "bridge",
    "tower",
    "station",
    "journey",
    "promise",
    "secret",
    "memory",
    "dream",
    "silence",
    "whisper",
    "fire",
    "rain",
    "snow",
    "moon",
    "star",
    "crown",
    "sword",
    "wolf",
    "raven",
    "fox",
    "horse",
    "dragon",
    "ghost",
    "witch",
    "king",
    "queen",
    "prince",
    "map",
    "clock",
    "house",
    "road",
    "sea",
    "valley",
    "cathedral",
    "library",
    "market",
    "carnival",
    "circus",
    "festival",
];
const FIRST_NAMES: [&str; 24] = [
    "Anna",
    "Thomas",
    "Clara",
    "Henry",
    "Margaret",
    "Samuel",
    "Eleanor",
    "Arthur",
    "Louisa",
    "Walter",
    "Edith",
    "Frederick",
    "Ada",
    "George",
    "Harriet",
    "Oscar",
    "Beatrice",
    "Victor",
    "Ivy",
    "Julian",
    "Rosa",
    "Felix",
    "Martha",
    "Leo",
];
const LAST_NAMES: [&str; 32] = [
    "Ashdown",
    "Blackwood",
    "Carrow",
    "Dunmore",
    "Ellery",
    "Fairbanks",
    "Greaves",
    "Hartwell",
    "Ingram",
    "Jessop",
    "Kettering",
    "Lockhart",
    "Merriman",
    "Northcote",
    "Oakley",
    "Pemberton",
    "Quayle",
    "Redfern",
    "Stanhope",
    "Thornbury",
    "Underhill",
    "Vance",
    "Whitlock",
    "Yardley",
    "Abernathy",
    "Bellamy",
    "Calloway",
    "Delacroix",
    "Everly",
    "Fenwick",
    "Garrity",
    "Holloway",
];
/// The seed's categories, so category pages and counts look like the seed's, only larger.
const CATEGORIES: [&str; 13] = [
    "Adventure",
    "Children",
    "Drama",
    "Fiction",
    "History",
    "Horror",
    "Mystery",
    "Philosophy",
    "Poetry",
    "Romance",
    "Science",
    "Science Fiction",
    "Travel",
];

/// One generated book, as the columns of `bs_books` hold it.
pub struct GeneratedBook {
    pub id: String,
    title: String,
    author: String,
    category: &'static str,
    price_cents: i64,
    rating: i64,
    description: String,
}

/// A fixed stream of pseudo-random numbers from `seed` (splitmix64): the same books every run.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

impl GeneratedBook {
    /// The `number`th generated book; its id ends with the number, so ids are unique.
    pub fn new(number: u64) -> GeneratedBook {
        let pick =
            |salt: u64, length: usize| (mix(number.wrapping_mul(31).wrapping_add(salt)) % length as u64) as usize;
        let adjective = capitalized(ADJECTIVES[pick(1, ADJECTIVES.len())]);
        let noun = capitalized(NOUNS[pick(2, NOUNS.len())]);
        let other_noun = capitalized(NOUNS[pick(3, NOUNS.len())]);
        let title = match pick(4, 4) {
            0 => format!("The {adjective} {noun}"),
            1 => format!("{noun} of the {adjective} {other_noun}"),
            2 => format!("The {noun} and the {other_noun}"),
            _ => format!("A {adjective} {noun}"),
        };
        let author = format!("{} {}", FIRST_NAMES[pick(5, FIRST_NAMES.len())], LAST_NAMES[pick(6, LAST_NAMES.len())]);
        let category = CATEGORIES[pick(7, CATEGORIES.len())];
        let slug: Vec<String> = title.split(' ').map(str::to_lowercase).collect();
        let id = format!("{}-{number}", slug.join("-"));
        GeneratedBook {
            description: format!(
                "{title}, by {author}. A {} title in a clean modern edition, with an afterword.",
                category.to_lowercase()
            ),
            price_cents: 499 + (pick(8, 26) as i64) * 100,
            rating: 30 + pick(9, 21) as i64,
            id,
            title,
            author,
            category,
        }
    }

    /// What the bookstore searches: title, author and category, lowercased
    /// (`rananeeti_bookstore::catalog::search_text`).
    fn search(&self) -> String {
        format!("{} {} {}", self.title, self.author, self.category).to_lowercase()
    }
}

/// The ids of the books in the catalog now (not deleted), in id order.
pub async fn book_ids(pool: &AnyPool) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM bs_books WHERE deleted = 0 ORDER BY id")
        .fetch_all(pool)
        .await
        .context("listing the catalog's book ids")?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Every book's stock to `CHECKOUT_STOCK`.
pub async fn raise_stock(pool: &AnyPool) -> anyhow::Result<()> {
    sqlx::query("UPDATE bs_books SET stock = $1")
        .bind(CHECKOUT_STOCK)
        .execute(pool)
        .await
        .context("raising the catalog's stock")?;
    Ok(())
}

/// Inserts generated books numbered `0..count` in one transaction, `INSERT_BATCH_ROWS` per
/// statement, recounts the books per category; on PostgreSQL then `ANALYZE bs_books`, so the planner knows the table's new size.
pub async fn insert(pool: &AnyPool, kind: StoreKind, count: usize) -> anyhow::Result<()> {
    // In the order they are made, not by id: a catalog grows by books of any title, so the
    // rows' physical order has nothing to do with the id order pages and searches read in.
    let books: Vec<GeneratedBook> = (0..count as u64).map(GeneratedBook::new).collect();
    let mut transaction = pool.begin().await.context("beginning the catalog's bulk insert")?;
    match kind {
        // The platform's pools bound each statement (1.5 s); a bulk insert on a busy VM may take
        // longer and is not the thing measured.
        StoreKind::Postgres => {
            sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *transaction).await?;
        }
        // SQLite's default page cache (2 MB) spills the transaction's pages to disk long before
        // 100,000 rows; this connection gets a larger one.
        StoreKind::Sqlite => {
            sqlx::query(&format!("PRAGMA cache_size = -{SQLITE_CACHE_KIB}")).execute(&mut *transaction).await?;
        }
    }
    let mut number = 0;
    let mut remaining = books.into_iter();
    while number < count {
        let batch = INSERT_BATCH_ROWS.min(count - number);
        let placeholders: Vec<String> = (0..batch)
            .map(|row| {
                let first = row * 12;
                let values: Vec<String> = (1..=12).map(|column| format!("${}", first + column)).collect();
                format!("({})", values.join(", "))
            })
            .collect();
        let statement = format!(
            "INSERT INTO bs_books (id, title, author, category, price_cents, rating, cover, stock, description, \
             search, hlc, deleted) VALUES {}",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&statement);
        for book in remaining.by_ref().take(batch) {
            let cover = format!("/bookstore/covers/{}.svg", book.id);
            let search = book.search();
            query = query
                .bind(book.id)
                .bind(book.title)
                .bind(book.author)
                .bind(book.category)
                .bind(book.price_cents)
                .bind(book.rating)
                .bind(cover)
                .bind(CHECKOUT_STOCK)
                .bind(book.description)
                .bind(search)
                .bind(0_i64)
                .bind(0_i64);
        }
        query.execute(&mut *transaction).await.with_context(|| format!("inserting generated books from {number}"))?;
        number += batch;
    }
    // Books per category are derived (the book commands keep them); a bulk load recounts them.
    rananeeti_bookstore::commands::rebuild_categories(&mut transaction)
        .await
        .context("recounting the books per category")?;
    transaction.commit().await.context("committing the generated books")?;
    if kind == StoreKind::Postgres {
        sqlx::query("ANALYZE bs_books").execute(pool).await.context("ANALYZE bs_books")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_books_are_distinct_and_searchable_by_their_words() {
        let books: Vec<GeneratedBook> = (0..10_000).map(GeneratedBook::new).collect();
        let ids: std::collections::HashSet<&str> = books.iter().map(|book| book.id.as_str()).collect();
        assert_eq!(ids.len(), books.len(), "ids are unique");
        // A title word matches some books but not most.
        let matching = books.iter().filter(|book| book.search().contains("river")).count();
        assert!((20..2_000).contains(&matching), "{matching} of 10,000 match \"river\"");
    }
}
