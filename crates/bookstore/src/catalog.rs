//! The catalog: books, their seed (269 public-domain titles in `data/catalog.tsv`), and the
//! bookstore's tables. Every region's migration inserts the same seed, so catalogs start equal;
//! later changes are `global` commands.

use rananeeti_platform::sqlx::{self, Row};
use rananeeti_platform::Migration;
use std::sync::LazyLock;

const SEED: &str = include_str!("../data/catalog.tsv");

/// A book as stored and shown.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Book {
    pub id: String,
    pub title: String,
    pub author: String,
    pub category: String,
    pub price_cents: i64,
    /// Tenths of a star, 0 to 50.
    pub rating: i64,
    /// Path of the cover image.
    pub cover: String,
    pub stock: i64,
    pub description: String,
}

/// A URL-safe id from a title: lowercase ASCII letters and digits joined by dashes.
pub fn slug(title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'à' | 'á' | 'â' | 'ä' => 'a',
            'è' | 'é' | 'ê' | 'ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' => 'i',
            'ò' | 'ó' | 'ô' | 'ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' => 'u',
            'č' => 'c',
            other => other,
        };
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.trim_end_matches('-').to_string()
}

/// A number from 0 to `n` fixed by `text` (so the seed is the same everywhere, every time).
fn spread(text: &str, salt: u64, n: u64) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for byte in text.bytes() {
        hash = (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % n) as i64
}

/// The seed catalog, parsed.
pub fn seed_books() -> Vec<Book> {
    SEED.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 4, "catalog.tsv: title, author, category, year: {line}");
            let (title, author, category, year) = (fields[0], fields[1], fields[2], fields[3]);
            let id = slug(title);
            let when = match year.parse::<i64>() {
                Ok(year) if year < 0 => format!("around {} BCE", -year),
                _ => format!("in {year}"),
            };
            Book {
                cover: format!("/bookstore/covers/{id}.svg"),
                price_cents: 499 + spread(&id, 1, 26) * 100,
                rating: 30 + spread(&id, 2, 21),
                stock: 20 + spread(&id, 3, 80),
                description: format!(
                    "{title}, by {author}, first published {when}. A {} classic, in a clean modern edition.",
                    category.to_lowercase()
                ),
                id,
                title: title.to_string(),
                author: author.to_string(),
                category: category.to_string(),
            }
        })
        .collect()
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

const TABLES: &str = "CREATE TABLE bs_books (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        author TEXT NOT NULL,
        category TEXT NOT NULL,
        price_cents BIGINT NOT NULL,
        rating BIGINT NOT NULL,
        cover TEXT NOT NULL,
        stock BIGINT NOT NULL,
        description TEXT NOT NULL,
        search TEXT NOT NULL,
        hlc BIGINT NOT NULL,
        deleted BIGINT NOT NULL
    );
    CREATE INDEX bs_books_category ON bs_books (category, title);
    CREATE TABLE bs_users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        home_region TEXT NOT NULL,
        created_hlc BIGINT NOT NULL
    );
    CREATE TABLE bs_cart_lines (
        user_id TEXT NOT NULL,
        book_id TEXT NOT NULL,
        quantity BIGINT NOT NULL,
        price_cents BIGINT NOT NULL,
        hlc BIGINT NOT NULL,
        PRIMARY KEY (user_id, book_id)
    );
    CREATE TABLE bs_orders (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        total_cents BIGINT NOT NULL,
        placed_hlc BIGINT NOT NULL,
        region TEXT NOT NULL
    );
    CREATE INDEX bs_orders_user ON bs_orders (user_id, placed_hlc);
    CREATE TABLE bs_order_lines (
        order_id TEXT NOT NULL,
        book_id TEXT NOT NULL,
        quantity BIGINT NOT NULL,
        price_cents BIGINT NOT NULL,
        PRIMARY KEY (order_id, book_id)
    );
    CREATE INDEX bs_order_lines_book ON bs_order_lines (book_id);
    CREATE TABLE bs_bestsellers (
        book_id TEXT PRIMARY KEY,
        sold BIGINT NOT NULL
    );
    CREATE TABLE bs_blog_posts (
        slug TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        body_md TEXT NOT NULL,
        author TEXT NOT NULL,
        published_hlc BIGINT NOT NULL,
        deleted BIGINT NOT NULL
    );";

const SEARCH_INDEX_POSTGRES: &str = "CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE INDEX bs_books_search_trgm ON bs_books USING gin (search gin_trgm_ops)";

/// What the home page reads on every view, kept so that its cost does not grow with the
/// catalog: books per category (`bs_categories`, derived like the best sellers: the book commands
/// recount the categories they touch, and it can be rebuilt from `bs_books` at any time), the
/// books by rating, and the best sellers by copies sold.
const BROWSE_INDEXES: &str = "CREATE TABLE bs_categories (
        category TEXT PRIMARY KEY,
        books BIGINT NOT NULL
    );
    INSERT INTO bs_categories (category, books)
        SELECT category, COUNT(*) FROM bs_books WHERE deleted = 0 GROUP BY category;
    CREATE INDEX bs_books_rating ON bs_books (rating DESC, id);
    CREATE INDEX bs_bestsellers_sold ON bs_bestsellers (sold DESC, book_id)";

static SEED_SQL: LazyLock<String> = LazyLock::new(|| {
    let rows: Vec<String> = seed_books()
        .iter()
        .map(|book| {
            format!(
                "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, 0, 0)",
                quote(&book.id),
                quote(&book.title),
                quote(&book.author),
                quote(&book.category),
                book.price_cents,
                book.rating,
                quote(&book.cover),
                book.stock,
                quote(&book.description),
                quote(&search_text(&book.title, &book.author, &book.category)),
            )
        })
        .collect();
    format!(
        "INSERT INTO bs_books (id, title, author, category, price_cents, rating, cover, stock, description, search, hlc, deleted) VALUES {}",
        rows.join(",\n")
    )
});

/// What a search matches against: title, author and category, lowercased.
pub fn search_text(title: &str, author: &str, category: &str) -> String {
    format!("{} {} {}", title, author, category).to_lowercase()
}

pub fn migrations() -> Vec<Migration> {
    let seed: &'static str = SEED_SQL.as_str();
    vec![
        Migration { component: "bookstore", version: 1, sqlite: TABLES, postgres: TABLES },
        Migration { component: "bookstore", version: 2, sqlite: seed, postgres: seed },
        // Substring search (`LIKE '%q%'`) on PostgreSQL through a trigram index, so it stays fast
        // with a large catalog; SQLite scans (fine at the seed's size).
        Migration { component: "bookstore", version: 3, sqlite: "", postgres: SEARCH_INDEX_POSTGRES },
        Migration { component: "bookstore", version: 4, sqlite: BROWSE_INDEXES, postgres: BROWSE_INDEXES },
        // SQLite's search scans this covering index instead of the whole table (about 2x faster
        // at 100,000 books); PostgreSQL searches through its trigram index.
        Migration {
            component: "bookstore",
            version: 5,
            sqlite: "CREATE INDEX bs_books_search ON bs_books (search, deleted, category, id)",
            postgres: "",
        },
    ]
}

pub const BOOK_COLUMNS: &str = "id, title, author, category, price_cents, rating, cover, stock, description";

pub fn book_from_row(row: &sqlx::any::AnyRow) -> Result<Book, sqlx::Error> {
    Ok(Book {
        id: row.try_get("id")?,
        title: row.try_get("title")?,
        author: row.try_get("author")?,
        category: row.try_get("category")?,
        price_cents: row.try_get("price_cents")?,
        rating: row.try_get("rating")?,
        cover: row.try_get("cover")?,
        stock: row.try_get("stock")?,
        description: row.try_get("description")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_has_at_least_200_distinct_books() {
        let books = seed_books();
        assert!(books.len() >= 200, "{}", books.len());
        let ids: std::collections::HashSet<_> = books.iter().map(|book| book.id.clone()).collect();
        assert_eq!(ids.len(), books.len(), "slugs are unique");
        assert!(books.iter().all(|book| (499..=2999).contains(&book.price_cents) && (30..=50).contains(&book.rating)));
        // Migrations are split into statements at semicolons.
        assert!(!SEED_SQL.contains(';'), "the seed holds no semicolon");
    }

    #[test]
    fn slugs_are_url_safe() {
        assert_eq!(slug("Tess of the d'Urbervilles"), "tess-of-the-d-urbervilles");
        assert_eq!(slug("Père Goriot"), "pere-goriot");
        assert_eq!(slug("R.U.R."), "r-u-r");
    }
}
