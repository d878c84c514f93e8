//! The splitter and `tables_of`: every quoting and comment case, line numbers, errors.

use crate::{DbError, Engine, Statement, head, split, tables_of};

use Engine::{Mysql, Postgres};

/// (line, text) of each statement.
fn parts(engine: Engine, script: &str) -> Vec<(usize, String)> {
    split(engine, script)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|Statement { text, line }| (line, text))
        .collect()
}

fn texts(engine: Engine, script: &str) -> Vec<String> {
    parts(engine, script).into_iter().map(|(_, t)| t).collect()
}

fn script_error(engine: Engine, script: &str) -> (usize, String) {
    match split(engine, script) {
        Err(DbError::Script { line, reason, .. }) => (line, reason),
        other => panic!("expected a script error, got {other:?}"),
    }
}

#[test]
fn statements_carry_their_first_line_and_lose_their_delimiter() {
    let script =
        "\n-- header\n\nCREATE TABLE A (ID INT);\n\n  INSERT INTO A\n  VALUES (1);\nSELECT 1";
    for engine in [Mysql, Postgres] {
        assert_eq!(
            parts(engine, script),
            [
                (4, "CREATE TABLE A (ID INT)".to_owned()),
                (6, "INSERT INTO A\n  VALUES (1)".to_owned()),
                (8, "SELECT 1".to_owned()),
            ]
        );
    }
}

#[test]
fn empty_statements_and_comment_only_scripts_are_dropped() {
    for engine in [Mysql, Postgres] {
        assert!(parts(engine, "").is_empty());
        assert!(parts(engine, " ;;\n;  -- nothing\n/* at all */ ;").is_empty());
        assert_eq!(texts(engine, ";;SELECT 1;;"), ["SELECT 1"]);
    }
}

#[test]
fn a_comment_before_a_statement_does_not_move_its_line() {
    let script = "/* a\nblock\ncomment */ -- and a line comment\n\nSELECT 1;";
    for engine in [Mysql, Postgres] {
        assert_eq!(parts(engine, script), [(5, "SELECT 1".to_owned())]);
    }
}

#[test]
fn semicolons_in_comments_do_not_split() {
    let script = "SELECT 1 -- not; here\n, 2 /* nor; here */ FROM DUAL;";
    for engine in [Mysql, Postgres] {
        let t = texts(engine, script);
        assert_eq!(t.len(), 1, "{t:?}");
        assert!(
            t[0].starts_with("SELECT 1") && t[0].ends_with("FROM DUAL"),
            "{t:?}"
        );
        assert!(
            !t[0].contains("not;") && !t[0].contains("nor;"),
            "comments stripped: {t:?}"
        );
    }
}

#[test]
fn hash_comments_are_mysql_only() {
    assert_eq!(texts(Mysql, "# a; comment\nSELECT 1;"), ["SELECT 1"]);
    // In PostgreSQL `#` is an operator: part of the statement.
    assert_eq!(texts(Postgres, "SELECT 5 # 3;"), ["SELECT 5 # 3"]);
}

#[test]
fn mysql_double_dash_needs_whitespace_to_comment() {
    assert_eq!(texts(Mysql, "SELECT 5--1;"), ["SELECT 5--1"]);
    assert_eq!(
        texts(Mysql, "SELECT 5 --\nFROM DUAL;"),
        ["SELECT 5 \nFROM DUAL"]
    );
    assert_eq!(
        texts(Postgres, "SELECT 5--1;\nSELECT 2;"),
        ["SELECT 5\nSELECT 2"]
    );
}

#[test]
fn postgres_block_comments_nest_mysql_ones_do_not() {
    assert_eq!(
        texts(Postgres, "/* a /* b; */ c; */ SELECT 1;"),
        ["SELECT 1"]
    );
    // MySQL ends the comment at the first */: " c" is then statement text.
    assert_eq!(
        texts(Mysql, "/* a /* b; */ c; SELECT 1;"),
        ["c", "SELECT 1"]
    );
}

#[test]
fn mysql_executable_comments_are_kept() {
    assert_eq!(
        texts(Mysql, "/*!40101 SET NAMES utf8; */;\nSELECT 1;"),
        ["/*!40101 SET NAMES utf8; */", "SELECT 1"]
    );
}

#[test]
fn single_quotes_with_doubled_quotes() {
    for engine in [Mysql, Postgres] {
        assert_eq!(
            texts(
                engine,
                "INSERT INTO T VALUES ('it''s; -- fine /*');SELECT 2;"
            ),
            ["INSERT INTO T VALUES ('it''s; -- fine /*')", "SELECT 2"]
        );
    }
}

#[test]
fn backslash_escapes_in_mysql_strings_not_in_postgres_standard_strings() {
    // MySQL: \' escapes the quote, the string goes on past the ;.
    assert_eq!(
        texts(Mysql, r"SELECT 'a\'; b';SELECT 2;"),
        [r"SELECT 'a\'; b'", "SELECT 2"]
    );
    assert_eq!(
        texts(Mysql, r#"SELECT "a\"; b";SELECT 2;"#),
        [r#"SELECT "a\"; b""#, "SELECT 2"]
    );
    // PostgreSQL: a backslash is an ordinary character in '…'.
    assert_eq!(
        texts(Postgres, r"SELECT 'a\';SELECT 2;"),
        [r"SELECT 'a\'", "SELECT 2"]
    );
}

#[test]
fn postgres_escape_strings_take_backslashes() {
    assert_eq!(
        texts(Postgres, r"SELECT E'a\'; b';SELECT 2;"),
        [r"SELECT E'a\'; b'", "SELECT 2"]
    );
    assert_eq!(
        texts(Postgres, r"SELECT e'x\\';SELECT 2;"),
        [r"SELECT e'x\\'", "SELECT 2"]
    );
    // A word ending in e is no escape-string prefix.
    assert_eq!(
        texts(Postgres, r"SELECT name'a\';SELECT 2;"),
        [r"SELECT name'a\'", "SELECT 2"]
    );
}

#[test]
fn double_quotes_and_backticks_are_identifiers() {
    assert_eq!(
        texts(Postgres, r#"CREATE TABLE "a;""b" (x INT);SELECT 2;"#),
        [r#"CREATE TABLE "a;""b" (x INT)"#, "SELECT 2"]
    );
    assert_eq!(
        texts(Mysql, "CREATE TABLE `a;``b\\` (x INT);SELECT 2;"),
        ["CREATE TABLE `a;``b\\` (x INT)", "SELECT 2"]
    );
}

#[test]
fn postgres_dollar_quoting() {
    let script = "CREATE FUNCTION f() RETURNS trigger AS $$\nBEGIN\n  NEW.x := 'a;b';\n  RETURN NEW;\nEND;\n$$ LANGUAGE plpgsql;\n\nSELECT 2;";
    let p = parts(Postgres, script);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].1.ends_with("$$ LANGUAGE plpgsql") && p[0].1.contains("RETURN NEW;"));
    assert_eq!(p[1], (8, "SELECT 2".to_owned()));
    // Tagged, with $$ and a different tag inside.
    let tagged = "DO $body$ BEGIN PERFORM $$x;$$; PERFORM $a$;$a$; END $body$;SELECT 3;";
    assert_eq!(
        texts(Postgres, tagged),
        [
            "DO $body$ BEGIN PERFORM $$x;$$; PERFORM $a$;$a$; END $body$",
            "SELECT 3"
        ]
    );
    // Parameters and identifiers with $ are not quotes.
    assert_eq!(
        texts(Postgres, "SELECT $1, a$b$c FROM t;SELECT 2;"),
        ["SELECT $1, a$b$c FROM t", "SELECT 2"]
    );
}

#[test]
fn mysql_delimiter_directives() {
    let script = "CREATE TABLE T (ID INT);\nDELIMITER //\nCREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n  SELECT 'a//b';\nEND//\nDELIMITER ;\nSELECT 2;";
    assert_eq!(
        parts(Mysql, script),
        [
            (1, "CREATE TABLE T (ID INT)".to_owned()),
            (
                3,
                "CREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n  SELECT 'a//b';\nEND".to_owned()
            ),
            (9, "SELECT 2".to_owned()),
        ]
    );
    // Lower case, $$, and a last statement without the delimiter.
    assert_eq!(
        texts(
            Mysql,
            "delimiter $$\nCREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW SET @a = 1; $$\nSELECT 3"
        ),
        [
            "CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW SET @a = 1;",
            "SELECT 3"
        ]
    );
    // DELIMITER is no directive in PostgreSQL.
    assert_eq!(
        texts(Postgres, "DELIMITER //\nSELECT 1;"),
        ["DELIMITER //\nSELECT 1"]
    );
    assert_eq!(
        script_error(Mysql, "SELECT 1;\nDELIMITER   \nSELECT 2;").0,
        2
    );
}

#[test]
fn unterminated_quotes_and_comments_are_script_errors_at_their_opening_line() {
    for engine in [Mysql, Postgres] {
        let (line, reason) = script_error(engine, "SELECT 1;\nSELECT 'abc;\nSELECT 2;");
        assert_eq!(line, 2);
        assert!(reason.contains("unterminated string"), "{reason}");
        let (line, reason) = script_error(engine, "SELECT 1;\n\n/* open\n");
        assert_eq!(line, 3);
        assert!(reason.contains("/*"), "{reason}");
        assert_eq!(script_error(engine, "SELECT \"x;").0, 1);
    }
    assert_eq!(script_error(Mysql, "SELECT `x;\n").0, 1);
    assert_eq!(script_error(Mysql, r"SELECT 'x\';").0, 1);
    assert_eq!(script_error(Postgres, "SELECT 1;\nDO $f$ BEGIN END;").0, 2);
    assert_eq!(script_error(Postgres, "/* a /* b */ c;").0, 1);
}

#[test]
fn line_numbers_count_newlines_inside_quotes_and_comments() {
    let script = "SELECT 'a\nb';\n/* c\nd */\nSELECT \"e\nf\";\nSELECT 3;";
    assert_eq!(
        parts(Postgres, script)
            .iter()
            .map(|p| p.0)
            .collect::<Vec<_>>(),
        [1, 5, 7]
    );
    let script = "SELECT 'a\nb';\n# c\nSELECT `e\nf`;\nSELECT 3;";
    assert_eq!(
        parts(Mysql, script).iter().map(|p| p.0).collect::<Vec<_>>(),
        [1, 4, 6]
    );
}

#[test]
fn crlf_scripts_split_like_lf_ones() {
    assert_eq!(
        parts(Mysql, "SELECT 1;\r\n-- c\r\nSELECT 2;\r\n"),
        [(1, "SELECT 1".to_owned()), (3, "SELECT 2".to_owned())]
    );
}

#[test]
fn tables_of_reads_every_create_table_form() {
    let mysql = "CREATE TABLE IF NOT EXISTS REG_RESOURCE (ID INT) ENGINE INNODB;\n\
        create table `UM_USER` (ID INT);\n\
        CREATE TABLE db.`Um_Role` (ID INT);\n\
        CREATE OR REPLACE TABLE x.y.Z_T (ID INT);\n\
        CREATE TEMPORARY TABLE TMP (ID INT);\n\
        CREATE INDEX IDX ON REG_RESOURCE (ID);\n\
        INSERT INTO REG_RESOURCE VALUES (1);\n\
        -- CREATE TABLE COMMENTED (ID INT);\n\
        CREATE TABLE IF NOT EXISTS reg_resource (ID INT);";
    assert_eq!(
        tables_of(Mysql, mysql).unwrap(),
        ["reg_resource", "um_user", "um_role", "z_t"]
    );
    let pg = "CREATE SEQUENCE REG_RESOURCE_SEQUENCE;\n\
        CREATE TABLE IF NOT EXISTS REG_RESOURCE (ID INTEGER DEFAULT nextval('reg_resource_sequence'));\n\
        CREATE UNLOGGED TABLE public.\"Am_Api\" (x INT);\n\
        CREATE TABLE \"public\" . am_policy(x INT);\n\
        CREATE GLOBAL TEMPORARY TABLE G (x INT);\n\
        CREATE TEMP TABLE T2 (x INT);\n\
        CREATE TABLE/* c */IDN_OAUTH2 (x INT);";
    assert_eq!(
        tables_of(Postgres, pg).unwrap(),
        ["reg_resource", "am_api", "am_policy", "idn_oauth2"]
    );
}

#[test]
fn tables_of_fails_like_split() {
    assert!(matches!(
        tables_of(Postgres, "CREATE TABLE 'x"),
        Err(DbError::Script { line: 1, .. })
    ));
}

#[test]
fn statement_heads_are_one_short_line() {
    assert_eq!(
        head("CREATE  TABLE\n  X (\n ID INT)"),
        "CREATE TABLE X ( ID INT)"
    );
    let long = format!("INSERT INTO T VALUES ({})", "1, ".repeat(60));
    let h = head(&long);
    assert_eq!(h.chars().count(), 80);
    assert!(h.ends_with("...") && !h.contains('\n'));
}
