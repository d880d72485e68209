// Allure 3 configuration for mailflow's HTML report.
//
// scripts/allure_report.sh always passes this file explicitly
// (`allure generate --config tools/allure/allurerc.mjs ...`): without --config
// the Allure 3 CLI only looks for allurerc.{js,mjs,cjs,ts,mts,cts,json,yaml,yml}
// in the current working directory (or --cwd), so a stray config in the
// caller's directory would otherwise change the report.
//
// Notes on how Allure 3 (3.18) differs from Allure 2 for allure-pytest results:
// - categories.json in the results directory is read but ignored by the
//   "awesome" report; categories are configured here (`categories`) instead.
//   Without any, failed -> "Product errors", broken -> "Test errors".
// - environment.properties / executor.json in the results directory still work.
// - Results with the same testCaseId + parameters (+ environment) are merged:
//   the latest attempt is shown, older ones become its "retries". allure-pytest's
//   own historyId is not used for that.
export default {
  name: "mailflow conformance",
  plugins: {
    awesome: {
      options: {
        reportName: "mailflow conformance",
        // Everything (data, attachments, JS) inlined into index.html, so the
        // report opens straight from disk (file://) and is one CI artifact.
        singleFile: true,
        reportLanguage: "en",
        // Tree = Allure 2's "Behaviors" view; results without these labels are
        // listed at the top level.
        groupBy: ["epic", "feature", "story"],
      },
    },
  },
};
