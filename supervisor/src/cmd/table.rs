//! [`render`]: a plain-text table whose columns are as wide as their widest cell, for
//! the list commands (`kv list`, `executions list`, `workflow list`, `status`, ...),
//! drawn by `comfy-table` with no borders: cells split by two spaces, left-aligned
//! unless a column is named right-aligned (numbers), and no line ending in blanks, so a
//! long last value costs no padding. Widths are display widths (a CJK character counts
//! two), so columns stay aligned for any text. [`indent`] nests one under a heading.

use comfy_table::{presets::NOTHING, CellAlignment, Table};

/// The header and rows as lines, each ending in `\n`, every column left-aligned.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    render_aligned(header, rows, &[])
}

/// As [`render`], with the columns at the indices in `right` aligned right; an empty
/// `header` draws none.
pub fn render_aligned(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut table = Table::new();
    table.load_style(NOTHING);
    if !header.is_empty() {
        table.set_header(header.to_vec());
    }
    table.add_rows(rows.iter().cloned());
    let last = table.column_count().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        // Two spaces between columns, none before the first or after the last.
        column.set_padding((0, if i == last { 0 } else { 2 }));
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    if table.is_empty() && header.is_empty() {
        return String::new();
    }
    // An empty last cell would leave the padding of the one before it.
    let mut out = table.trim_fmt();
    out.push('\n');
    out
}

/// `text`'s lines, each indented by two spaces (a table nested under a heading).
pub fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(cells: &[&[&str]]) -> Vec<Vec<String>> {
        cells
            .iter()
            .map(|r| r.iter().map(|c| c.to_string()).collect())
            .collect()
    }

    #[test]
    fn columns_fit_the_widest_cell() {
        let rows = rows(&[&["a-rather-long-key", "1"], &["k", "{\"x\": 2}"]]);
        assert_eq!(
            render(&["key", "value"], &rows),
            "key                value\n\
             a-rather-long-key  1\n\
             k                  {\"x\": 2}\n"
        );
    }

    #[test]
    fn no_line_ends_in_blanks() {
        let rows = rows(&[&["e-1", "", ""], &["e-2", "running", ""]]);
        assert_eq!(
            render(&["id", "status", "error"], &rows),
            "id   status   error\n\
             e-1\n\
             e-2  running\n"
        );
    }

    #[test]
    fn numbers_can_align_right() {
        let rows = rows(&[&["w-1", "3", "12.5"], &["a-longer-one", "120", "7.0"]]);
        assert_eq!(
            render_aligned(&["name", "workers", "rate"], &rows, &[1, 2]),
            "name          workers  rate\n\
             w-1                 3  12.5\n\
             a-longer-one      120   7.0\n"
        );
    }

    #[test]
    fn wide_characters_count_double() {
        let rows = rows(&[&["日本", "x"], &["ab", "y"]]);
        assert_eq!(
            render(&["k", "v"], &rows),
            "k     v\n\
             日本  x\n\
             ab    y\n"
        );
    }

    #[test]
    fn a_header_alone_is_one_line() {
        assert_eq!(render(&["org", "key"], &[]), "org  key\n");
    }

    #[test]
    fn without_a_header_only_rows_indented_under_a_heading() {
        let rows = rows(&[&["sup-a", "live", "3"], &["sup-long", "dead", "12"]]);
        assert_eq!(
            indent(&render_aligned(&[], &rows, &[2])),
            "  sup-a     live   3\n\
             \x20 sup-long  dead  12\n"
        );
        assert_eq!(render_aligned(&[], &[], &[]), "");
    }
}
