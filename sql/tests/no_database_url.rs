//! Without DSF_TEST_DB_URL, database tests fail loudly and say how to run
//! them; they are never silently skipped. (Alone in its own test binary, so
//! removing the variable races with no other test.)

#[test]
#[should_panic(expected = "Run them through scripts/test")]
fn missing_test_database_url_panics_and_says_to_use_scripts_test() {
    std::env::remove_var(dsf_sql::testing::URL_VAR);
    let _ = dsf_sql::testing::fresh();
}
